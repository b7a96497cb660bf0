"""Dataset formats (installed as ``labelgen.data``).

Readers for the formats users have, all yielding :class:`~labelgen.data.samples.LabelledImage`:

- :mod:`labelgen.data.folder`   the project's own folder format (images/ + index-PNG masks/ + classes.json)
- :mod:`labelgen.data.palette`  VOC / CVAT palette-PNG masks
- :mod:`labelgen.data.ccp`      the Clothing Co-Parsing published layout (+ CCP-8 map, fixed splits, import)
- :mod:`labelgen.data.shards`   synthetic datasets as WebDataset tar shards (writer, reader, resume)
"""

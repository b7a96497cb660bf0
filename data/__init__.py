"""Dataset formats (installed as ``labelgen.data``).

Readers for the formats users have, all yielding :class:`~labelgen.data.samples.LabelledImage`:

- :mod:`labelgen.data.folder`   the project's own folder format (images/ + index-PNG masks/ + classes.json)
- :mod:`labelgen.data.coco`, :mod:`~labelgen.data.cityscapes`, :mod:`~labelgen.data.labelstudio`  the
  formats users arrive with; :mod:`labelgen.data.formats` (the import registry, ``labelgen data import``),
  :mod:`labelgen.data.mapping` (``--classes``), :mod:`labelgen.data.export` (``labelgen data export``)
- :mod:`labelgen.data.ccp`      the Clothing Co-Parsing published layout (+ CCP-8 map, fixed splits, import)
- :mod:`labelgen.data.shards`   synthetic datasets as WebDataset tar shards (writer, reader, resume)
"""

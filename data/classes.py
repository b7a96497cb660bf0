"""Class lists: names and colours, read from the classes files users have.

Accepted files (first found wins): ``classes.json`` (the project's own), ``labelmap.txt`` (CVAT /
VOC-style export: ``name:r,g,b::``), ``classes.txt`` (one class per line: ``name`` or
``name r g b`` or ``name #rrggbb``). Class ids are line order, starting at 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelgen.data.io import IGNORE_INDEX, atomic_write_json, read_json
from labelgen.errors import DataError

CLASSES_FILENAMES = ("classes.json", "labelmap.txt", "classes.txt")
BACKGROUND = "background"
# labelme's labels.txt / class_names.txt (labelme2voc.py, labelme2coco.py): "__ignore__" (id -1, written as 255
# in its masks, never a class) and "_background_" (id 0), the background under another name
LABELME_IGNORE, LABELME_BACKGROUND = "__ignore__", "_background_"
LABELME_CLASSES = "class_names.txt"  # what labelme2voc.py writes beside JPEGImages/ and SegmentationClass/

# Distinct default colours for classes without one (VOC's colour map construction).
def default_colour(class_id: int) -> tuple[int, int, int]:
    r = g = b = 0
    c = class_id
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return (r, g, b)


@dataclass(frozen=True)
class ClassList:
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if not self.names:
            raise DataError("class list is empty")
        if len(self.names) != len(self.colours):
            raise DataError("class names and colours differ in number")
        if len(self.names) > 255:
            raise DataError(f"{len(self.names)} classes: at most 255 fit in an index PNG (255 = ignore)")
        if len(set(self.names)) != len(self.names):
            raise DataError(f"duplicate class names in {list(self.names)}")

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> "ClassList":
        names = tuple(n.strip() for n in names)
        return cls(names, tuple(default_colour(i) for i in range(len(names))))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def palette(self) -> list[tuple[int, int, int]]:
        return list(self.colours)

    def to_json(self) -> dict:
        return {"classes": [{"id": i, "name": n, "color": list(c)} for i, (n, c) in enumerate(zip(self.names, self.colours))]}

    @classmethod
    def from_json(cls, obj: dict, source: str = "classes.json") -> "ClassList":
        """``{"classes": [{"id", "name", "color": [r, g, b]}, ...]}``; ``source`` (the file) names any problem."""
        try:
            items = sorted(obj["classes"], key=lambda d: d["id"])
            if [d["id"] for d in items] != list(range(len(items))):
                raise DataError(f"{source}: class ids must be 0..N-1 without gaps")
            names = tuple(d["name"] for d in items)
        except (KeyError, TypeError) as e:
            raise DataError(f"{source}: expected {{'classes': [{{'id', 'name', 'color'}}, ...]}} ({e})") from None
        bad = [n for n in names if not isinstance(n, str) or not n.strip()]
        if bad:
            raise DataError(f"{source}: class name {bad[0]!r} is not a non-empty string")
        return cls(names, tuple(_json_colour(d.get("color", default_colour(d["id"])), d["name"], source) for d in items))

    def save(self, path: Path) -> None:
        atomic_write_json(Path(path), self.to_json())

    def colour_to_index(self, rgb_mask: np.ndarray, source: Path | str = "mask") -> np.ndarray:
        """Map a colour mask uint8 [H, W, 3] to an index mask uint8 [H, W]; unknown colours are an error.
        White (255,255,255) and VOC's void colour (224,224,192) become IGNORE_INDEX unless they are classes."""
        assert rgb_mask.ndim == 3 and rgb_mask.shape[2] == 3, rgb_mask.shape
        code = (rgb_mask[..., 0].astype(np.int32) << 16) | (rgb_mask[..., 1].astype(np.int32) << 8) | rgb_mask[..., 2]
        lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.colours)}
        for void in ((255, 255, 255), (224, 224, 192)):
            lut.setdefault((void[0] << 16) | (void[1] << 8) | void[2], IGNORE_INDEX)
        values, inverse = np.unique(code, return_inverse=True)
        mapped = np.empty(len(values), dtype=np.uint8)
        for k, v in enumerate(values):
            if int(v) not in lut:
                rgb = (int(v) >> 16, (int(v) >> 8) & 255, int(v) & 255)
                raise DataError(f"{source}: colour {rgb} is not a class colour of {list(self.names)}")
            mapped[k] = lut[int(v)]
        return mapped[inverse].reshape(code.shape)


def _json_colour(value, name: str, source: str) -> tuple[int, int, int]:
    """A classes.json colour: [r, g, b], integers 0..255."""
    if (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in value)):
        return (value[0], value[1], value[2])
    raise DataError(f"{source}: class {name!r}: colour {value!r} is not [r, g, b] with integers 0..255")


def _parse_colour(tokens: list[str], source: str) -> tuple[int, int, int]:
    if len(tokens) == 1 and tokens[0].startswith("#") and len(tokens[0]) == 7:
        h = tokens[0][1:]
        return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
    if len(tokens) == 3:
        rgb = tuple(int(t) for t in tokens)
        if all(0 <= v <= 255 for v in rgb):
            return rgb  # type: ignore[return-value]
    raise DataError(f"{source}: bad colour {' '.join(tokens)!r} (use 'r g b' or '#rrggbb')")


def read_classes_file(path: Path) -> ClassList:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: classes file not found")
    if path.suffix == ".json":
        return ClassList.from_json(read_json(path), str(path))
    names, colours = [], []
    for line_no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if path.name == "labelmap.txt":  # CVAT/VOC: name:r,g,b:parts:actions
                name, colour = line.split(":")[:2]
                rgb = _parse_colour(colour.split(","), f"{path}:{line_no}") if colour else default_colour(len(names))
            else:
                tokens = line.split()
                name, rgb = tokens[0], (_parse_colour(tokens[1:], f"{path}:{line_no}") if len(tokens) > 1 else default_colour(len(names)))
        except ValueError:
            raise DataError(f"{path}:{line_no}: cannot parse {line!r}") from None
        names.append(name)
        colours.append(rgb)
    if not names:
        raise DataError(f"{path}: no classes listed")
    return ClassList(tuple(names), tuple(colours))


def labelme_name(name: str) -> str | None:
    """A class name as labelme's converters write it, as a project class: ``_background_`` is ``background``,
    ``__ignore__`` no class at all (None: its pixels are 255 = ignore); any other name is kept."""
    return None if name == LABELME_IGNORE else BACKGROUND if name == LABELME_BACKGROUND else name


def read_labelme_classes(path: Path) -> ClassList:
    """labelme2voc.py's ``class_names.txt``: one class per line in id order, ``_background_`` first (read as
    ``background``; a leading ``__ignore__`` line, labels.txt's, is no class); VOC colours, as labelme's."""
    names = [n for n in (labelme_name(line.strip()) for line in Path(path).read_text().splitlines() if line.strip())
             if n is not None]
    if not names:
        raise DataError(f"{path}: no classes listed")
    try:
        return ClassList.from_names(names)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def find_classes_file(*folders: Path) -> Path:
    """The first classes file in ``folders`` (in order); a clear error naming them if none."""
    for folder in folders:
        for name in CLASSES_FILENAMES:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    where = ", ".join(str(f) for f in folders)
    raise DataError(f"{where}: missing classes file (one of {', '.join(CLASSES_FILENAMES)})")

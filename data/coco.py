"""COCO object / stuff annotations (JSON) read as semantic masks, and written from them.

Read (``labelgen data import --format coco``): ``images`` (``id``, ``file_name``, ``width``,
``height``), ``categories`` (``id``, ``name``; optional ``color``), ``annotations`` (``image_id``,
``category_id``, ``segmentation``: polygons ``[[x1, y1, x2, y2, ...], ...]``, uncompressed RLE
``{"size": [h, w], "counts": [..]}`` or compressed RLE ``{"size": [h, w], "counts": "..."}``). Every
other field (``bbox``, ``area``, ``iscrowd``, ``keypoints``, ``info``, ``licenses``) is not used:
crowd regions are painted as their category like any other. Annotations without a segmentation are
refused.

Semantic masks: category -> class (category order = class order, by id); **overlaps: annotations are
painted largest first, so a smaller region lying on a larger one keeps its pixels** (ties: file
order); pixels no annotation covers become the ``background`` class (a category of that name, else a
new class 0) or 255 = ignore (``--unlabelled ignore``).

Polygons are rasterised by pycocotools after our own checks (a vertex that is not a finite number or lies
more than 1 px outside its image is an error naming the annotation); RLE is parsed and checked here (runs
covering exactly the image) and painted by numpy. Unknown or duplicate category and image ids, image
files that are missing, outside the dataset folder or of another size than the JSON says are errors too.

Written (``labelgen data export --format coco``): ``OUT/images/<key>.png`` and
``OUT/annotations.json`` with one annotation per (image, class present): compressed RLE,
``iscrowd`` 0, ``area`` and ``bbox`` filled; every class is a category (id = class id + 1, with its
``color``); ignore pixels (255) are left unannotated (COCO-stuff's convention).
"""
from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from labelgen.data.classes import BACKGROUND, ClassList, default_colour, labelme_name
from labelgen.data.folder import LabelledImage
from labelgen.data.io import (IGNORE_INDEX, atomic_write_json, is_count, read_image, read_json, repeated,
                              resolve_inside)
from labelgen.errors import DataError

UNLABELLED_CHOICES = ("background", "ignore")  # what pixels no annotation covers become
OUTSIDE_TOLERANCE_PX = 1.0  # a polygon vertex this far beyond the image border is still accepted (clipped)
RLE_VALUE_BITS = 65  # 13 six-bit characters: a compressed RLE value needing more is malformed (runs are < 2^63)


# ---------------------------------------------------------------- shapes -> binary masks
def rle_counts_from_string(text: str, where: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (COCO's 6-bit, delta-coded variable-length form)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        value, shift, more = 0, 0, True
        while more:
            if p >= len(text):
                raise DataError(f"{where}: truncated compressed RLE")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise DataError(f"{where}: bad character {text[p]!r} in compressed RLE")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if more and shift >= RLE_VALUE_BITS:  # also keeps a string of continuation bytes from costing n^2
                raise DataError(f"{where}: malformed compressed RLE (a run length of more than {RLE_VALUE_BITS} bits)")
            if not more and c & 0x10:
                value -= 1 << shift  # sign extension
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_to_mask(rle: dict, hw: tuple[int, int], where: str) -> np.ndarray:
    """A COCO RLE (compressed or not) -> bool [H, W], checked against the image size ``hw``: its runs (parsed
    here, integers >= 0 covering exactly H*W pixels) are painted by numpy, so pycocotools' own string parser,
    which can read a string differently (past its end, or long values through C's fixed-width shifts), is
    never involved."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise DataError(f"{where}: RLE must be {{'size': [h, w], 'counts': ...}}")
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(is_count(v) for v in size)):
        raise DataError(f"{where}: RLE size must be [height, width] (integers), not {json.dumps(size)[:40]}")
    if tuple(size) != tuple(hw):
        raise DataError(f"{where}: RLE of the wrong size {size[1]}x{size[0]} for an image of {hw[1]}x{hw[0]} (WxH)")
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(is_count(v) for v in counts):
            raise DataError(f"{where}: RLE counts must be integers >= 0")
        runs = counts
    elif isinstance(counts, str):
        runs = rle_counts_from_string(counts, where)
    else:
        raise DataError(f"{where}: RLE counts must be a list or a string")
    if any(v < 0 for v in runs) or sum(runs) != hw[0] * hw[1]:
        raise DataError(f"{where}: RLE of the wrong size (its runs cover {sum(runs)} pixels, the image has "
                        f"{hw[0] * hw[1]})")
    values = np.arange(len(runs)) % 2 == 1  # runs alternate background / region, background first
    return np.ascontiguousarray(np.repeat(values, runs).reshape(hw[1], hw[0]).T)  # column-major, as COCO counts


def polygons_to_mask(polygons: list, hw: tuple[int, int], where: str) -> np.ndarray:
    """Polygons ``[[x1, y1, x2, y2, ...], ...]`` in pixels -> bool [H, W] (their union)."""
    from pycocotools import mask as mask_utils

    h, w = hw
    clean = []
    for poly in polygons:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            raise DataError(f"{where}: a polygon needs at least 3 (x, y) points")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
            raise DataError(f"{where}: polygon coordinates must be numbers, not {json.dumps(poly)[:40]}")
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(xy).all():  # NaN passes every bound below and crashes pycocotools' rasteriser
            raise DataError(f"{where}: polygon vertex {xy[~np.isfinite(xy).all(1)][0].tolist()} is not a finite number")
        tol = OUTSIDE_TOLERANCE_PX
        if (xy[:, 0] < -tol).any() or (xy[:, 0] > w + tol).any() or (xy[:, 1] < -tol).any() or (xy[:, 1] > h + tol).any():
            raise DataError(f"{where}: polygon outside the image (x {xy[:, 0].min():.1f}..{xy[:, 0].max():.1f}, "
                            f"y {xy[:, 1].min():.1f}..{xy[:, 1].max():.1f}; image {w}x{h})")
        clean.append(xy.ravel().tolist())
    if not clean:
        raise DataError(f"{where}: empty segmentation")
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(clean, h, w))).astype(bool)


def paint(shapes: list[tuple[np.ndarray, int]], hw: tuple[int, int], fill: int) -> np.ndarray:
    """Binary regions with their class ids -> uint8 [H, W]: largest first, so smaller regions stay on top
    (stable: equal areas keep their order); pixels no region covers are ``fill``."""
    mask = np.full(hw, fill, dtype=np.uint8)
    for region, class_id in sorted(shapes, key=lambda s: -int(s[0].sum())):
        mask[region] = class_id
    return mask


def source_classes(names: list[str], colours: list[tuple[int, int, int] | None], unlabelled: str
                   ) -> tuple[ClassList, int]:
    """Classes of an annotation set whose unannotated pixels are ``unlabelled`` ('background': the class
    named so, else a new class 0; 'ignore': 255). labelme's names are read as labelme means them
    (:func:`~labelgen.data.classes.labelme_name`): ``_background_`` is the background class, not a second
    one, ``__ignore__`` no class (:func:`class_of_name`: 255). Returns (classes, fill value)."""
    if unlabelled not in UNLABELLED_CHOICES:
        raise DataError(f"unlabelled pixels must become one of {', '.join(UNLABELLED_CHOICES)}, not {unlabelled!r}")
    kept: dict[str, tuple[int, int, int]] = {}  # project name -> colour (the first category of the name gives it)
    for i, (name, colour) in enumerate(zip(names, colours)):
        project = labelme_name(name)
        if project is not None:
            kept.setdefault(project, colour or default_colour(0 if project == BACKGROUND else i + 1))
    names, colours = list(kept), list(kept.values())
    if unlabelled == "background" and BACKGROUND not in names:
        names, colours = [BACKGROUND, *names], [default_colour(0), *colours]
    classes = ClassList(tuple(names), tuple(tuple(c) for c in colours))
    return classes, classes.names.index(BACKGROUND) if unlabelled == "background" else IGNORE_INDEX


def class_of_name(classes: ClassList, name: str) -> int:
    """The class id a source class ``name`` paints (classes from :func:`source_classes`): 255 for ``__ignore__``."""
    project = labelme_name(name)
    return IGNORE_INDEX if project is None else classes.names.index(project)


def find_image(file_name: str | list[str], root: Path, folders: list[Path | str], what: str) -> Path:
    """The first ``root/folder/file_name`` (or ``root/folder/<its base name>``) that exists, for ``folders``
    relative to the dataset folder ``root`` (or the ``--images`` folder); a list of names is tried in turn,
    the most specific first. One that resolves outside ``root`` (``../``, an absolute path, a symlink out)
    is refused (:func:`~labelgen.data.io.resolve_inside`)."""
    names = [file_name] if isinstance(file_name, str) else file_name
    for name in names:
        for folder in folders:
            for relative in (Path(folder) / name, Path(folder) / Path(name).name):
                if (root / relative).is_file():
                    try:
                        return resolve_inside(root, relative)
                    except DataError as e:
                        raise DataError(f"{what}: image {name!r}: {e}") from None
    raise DataError(f"{what}: image {names[-1]!r} not found (looked in {', '.join(str(root / f) for f in folders)}"
                    f"{'' if len(names) == 1 else ' for ' + ', '.join(map(repr, names))}; --images DIR says where "
                    f"the images are)")


def images_folder(images: Path | None) -> Path | None:
    """The ``--images`` folder, checked: image files named in an annotation file are looked up inside it."""
    if images is not None and not Path(images).is_dir():
        raise DataError(f"--images {images}: not a folder")
    return None if images is None else Path(images)


# ---------------------------------------------------------------- reader
def find_annotation_json(src: Path, split: str, what: str) -> Path:
    """SRC itself when a file, else the one ``*.json`` in SRC or SRC/annotations (several: those whose
    name contains ``split``)."""
    if src.is_file():
        return src
    candidates = sorted(p for d in (src, src / "annotations") if d.is_dir() for p in d.glob("*.json"))
    if len(candidates) > 1:
        candidates = [p for p in candidates if split in p.stem] or candidates
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise DataError(f"{src}: expected one {what} JSON in it or in annotations/ (found: {found}); "
                        f"pass the JSON file itself")
    return candidates[0]


JSON_SCAN_CHUNK = 1 << 17  # bytes read at a time when looking for a JSON file's keys (format detection)
LONGEST_KEY = 1 << 16  # a longer string cut by a chunk's end is not taken for a key
_AFTER_STRING = re.compile(rb"[ \t\r\n]*(.?)", re.S)  # the next byte that is not white space


def _object_keys(buf: bytes, state: tuple[int, bool, bool], target: int, final: bool
                 ) -> tuple[set[str], tuple[int, bool, bool], int | None, bool]:
    """One chunk of :func:`json_keys`: the keys met at depth ``target`` in ``buf`` (JSON bytes read from
    ``state`` = (depth, inside a string, first byte escaped)). Returns (keys, the state after ``buf``, the
    offset of a key cut off by the chunk's end, to read again with the next chunk, else None, whether the
    object at ``target`` ended). Values are skipped with array operations, never decoded."""
    depth, in_string, escaped = state
    a = np.frombuffer(buf, np.uint8)
    esc = np.zeros(a.size, bool)
    esc[:1] = escaped
    for i in np.flatnonzero(a[:-1] == 0x5C).tolist():  # a backslash escapes the next byte unless itself escaped
        esc[i + 1] = not esc[i]
    quote = (a == 0x22) & ~esc
    inside = (np.cumsum(quote, dtype=np.int32) - quote + in_string) % 2 == 1  # inside a string before each byte
    outside = ~inside & ~quote
    delta = (outside & ((a == 0x7B) | (a == 0x5B))).astype(np.int32) - (outside & ((a == 0x7D) | (a == 0x5D)))
    after = depth + np.cumsum(delta, dtype=np.int32)
    ended = np.flatnonzero(after < target)
    end = int(ended[0]) if ended.size else a.size
    quotes = np.flatnonzero(quote)
    opens, closes = quotes[~inside[quotes]], quotes[inside[quotes]]
    keys: set[str] = set()
    for start in opens[(opens < end) & (after[opens] == target)].tolist():
        k = int(np.searchsorted(closes, start))
        stop = int(closes[k]) if k < closes.size else None
        following = _AFTER_STRING.match(buf, stop + 1).group(1) if stop is not None else b""
        if not following:  # the key or its colon lies in the next chunk
            if final or a.size - start > LONGEST_KEY:
                continue
            return keys, (target, False, False), start, False
        if following == b":":
            try:
                keys.add(json.loads(buf[start:stop + 1]))
            except ValueError:  # not valid JSON text: no key
                pass
    if not a.size:
        return keys, state, None, False
    state = (int(after[-1]), bool(inside[-1] ^ quote[-1]), bool(a[-1] == 0x5C and not esc[-1]))
    return keys, state, None, end < a.size


def json_keys(path: Path, wanted: tuple[str, ...] = ()) -> tuple[str, set[str]]:
    """(the first character of the JSON file ``path``, the keys of its top-level object or, when it is a list,
    of the list's first object), read in chunks of :data:`JSON_SCAN_CHUNK` bytes: the values are skipped,
    never held, so a 450 MB COCO file that names its categories last is recognised in little memory. Stops
    early once every key of ``wanted`` is seen."""
    with open(path, "rb") as f:
        buf = f.read(JSON_SCAN_CHUNK).removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")
        first = buf[:1].decode("latin-1")
        target = {"{": 1, "[": 2}.get(first)
        buf = buf[1:]
        if target == 2:  # a list: the keys of its first element, an object
            buf = buf.lstrip(b" \t\r\n")
            if buf[:1] != b"{":
                return first, set()
            buf = buf[1:]
        keys: set[str] = set()
        state = (target or 0, False, False)
        while target is not None:
            more = f.read(JSON_SCAN_CHUNK)
            found, state, carry, ended = _object_keys(buf, state, target, final=not more)
            keys |= found
            if ended or not more or (wanted and keys >= set(wanted)):
                break
            buf = (buf[carry:] if carry is not None else b"") + more
    return first, keys


def json_head_has(path: Path, start: str, keys: tuple[str, ...]) -> bool:
    """Whether the annotation JSON at (or in) ``path`` starts with ``start`` and its top-level object (or
    first list element) has ``keys``, wherever in the file they are (format detection, in little memory:
    :func:`json_keys`; the reader validates for real)."""
    try:
        first, found = json_keys(find_annotation_json(path, "", "annotation"), keys)
    except (DataError, OSError):
        return False
    return first == start and set(keys) <= found


def looks_like_coco(path: Path) -> bool:
    return json_head_has(path, "{", ("images", "categories"))


class CocoReader:
    """A COCO JSON (SRC = the JSON file, or a folder with one in it or in ``annotations/``) as semantic masks.
    Image files are looked up by ``file_name`` beside the JSON, in ``images/``, in ``<split>/`` and in
    the folder named after the JSON (``instances_train2017.json`` -> ``train2017/``); with ``images``
    (``--images DIR``), in that folder instead (``file_name`` inside it, or its base name)."""

    def __init__(self, src: Path, split: str = "train", unlabelled: str = "background", images: Path | None = None):
        self.json_path = find_annotation_json(Path(src), split, "COCO annotation")
        data = read_json(self.json_path)
        where = str(self.json_path)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise DataError(f"{where}: not a COCO annotation file (needs lists 'images', 'annotations', 'categories')")
        try:
            categories = sorted(data["categories"], key=lambda c: int(c["id"]))
            self.category_ids = [int(c["id"]) for c in categories]
            names = [str(c["name"]) for c in categories]
            colours = [tuple(int(v) for v in c["color"]) if c.get("color") else None for c in categories]
            image_ids = [int(im["id"]) for im in data["images"]]
            self.images = dict(zip(image_ids, data["images"]))
            for im in self.images.values():
                im["file_name"], im["width"], im["height"] = str(im["file_name"]), int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise DataError(f"{where}: bad COCO categories or images ({type(e).__name__}: {e})") from None
        for what, ids in (("category", self.category_ids), ("image", image_ids)):
            if repeated(ids):  # one image's annotations would be painted on another, one image imported twice
                raise DataError(f"{where}: duplicate {what} ids {', '.join(map(str, repeated(ids)[:10]))} "
                                f"(each {what} needs its own id)")
        self.classes, self.fill = source_classes(names, colours, unlabelled)
        self.class_of = {cid: class_of_name(self.classes, n) for cid, n in zip(self.category_ids, names)}
        self.annotations: dict[int, list[tuple[int, dict]]] = {i: [] for i in self.images}
        for k, ann in enumerate(data["annotations"]):
            ann_where = f"{where}: annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
            if not isinstance(ann, dict) or not all(is_count(ann.get(k)) for k in ("image_id", "category_id")):
                raise DataError(f"{ann_where}: needs image_id and category_id (integers)")
            if ann["category_id"] not in self.class_of:
                raise DataError(f"{ann_where}: unknown category id {ann['category_id']} (categories: "
                                f"{', '.join(map(str, self.category_ids))})")
            if ann["image_id"] not in self.annotations:
                raise DataError(f"{ann_where}: unknown image id {ann['image_id']}")
            if not ann.get("segmentation"):
                raise DataError(f"{ann_where}: no segmentation (boxes alone do not make a mask)")
            self.annotations[ann["image_id"]].append((k, ann))
        root = self.json_path.parent.parent if self.json_path.parent.name == "annotations" else self.json_path.parent
        stem = self.json_path.stem
        for prefix in ("instances_", "stuff_", "panoptic_"):
            stem = stem.removeprefix(prefix)
        self.root = root
        self.image_folders = list(dict.fromkeys([self.json_path.parent.relative_to(root), Path(), Path("images"),
                                                 Path(split), Path(stem), Path("images", stem)]))
        if images is not None:
            self.root, self.image_folders = images_folder(images), [Path()]
        self.ids = sorted(self.images)

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[LabelledImage]:
        for image_id in self.ids:
            yield self.read(image_id)

    def read(self, image_id: int) -> LabelledImage:
        info = self.images[image_id]
        where = f"{self.json_path}: image {image_id}"
        path = find_image(info["file_name"], self.root, self.image_folders, where)
        image = read_image(path)
        hw = (info["height"], info["width"])
        if image.shape[:2] != hw:
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, {self.json_path} says "
                            f"{hw[1]}x{hw[0]} (WxH)")
        shapes = []
        for k, ann in self.annotations[image_id]:
            ann_where = f"{self.json_path}: annotation {ann.get('id', k)}"
            segm = ann["segmentation"]
            region = polygons_to_mask(segm, hw, ann_where) if isinstance(segm, list) else rle_to_mask(segm, hw, ann_where)
            shapes.append((region, self.class_of[ann["category_id"]]))
        return LabelledImage(path.stem, image, paint(shapes, hw, self.fill), path, self.json_path)


# ---------------------------------------------------------------- writer
def write_coco(items: list[tuple[str, Path, np.ndarray]], classes: ClassList, json_path: Path) -> int:
    """``items``: (key, image file name relative to the JSON's folder, index mask uint8 [H, W]).
    Writes the annotation JSON (atomically); returns the number of annotations."""
    from pycocotools import mask as mask_utils

    images, annotations = [], []
    for image_id, (key, file_name, mask) in enumerate(items, 1):
        h, w = mask.shape
        images.append({"id": image_id, "file_name": str(file_name), "width": w, "height": h})
        for class_id in np.unique(mask):
            if class_id == IGNORE_INDEX:
                continue
            rle = mask_utils.encode(np.asfortranarray(mask == class_id, dtype=np.uint8))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(class_id) + 1,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                "area": int(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0,
            })
    categories = [{"id": i + 1, "name": n, "supercategory": "", "color": list(c)}
                  for i, (n, c) in enumerate(zip(classes.names, classes.colours))]
    atomic_write_json(json_path, {"info": {"description": "exported by labelgen"}, "images": images,
                                  "annotations": annotations, "categories": categories})
    return len(annotations)

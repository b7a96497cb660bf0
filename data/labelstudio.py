"""Label Studio "JSON" export (a list of tasks) read as semantic masks.

Used fields: per task ``data.<image key>`` (the image URL or path; the value of ``data.image``, else
the only string in ``data``) and ``annotations[*]`` (the first one not ``was_cancelled``; tasks without
one are skipped and counted); per result ``type`` (``brushlabels`` or ``polygonlabels``; other types,
e.g. rectangles and choices, are skipped and counted), ``original_width``, ``original_height``,
``value.brushlabels`` / ``value.polygonlabels`` (the first label), ``value.rle`` (brush: Label Studio's
bit-packed RLE of the RGBA canvas; a pixel belongs to the label where alpha >= 128) and
``value.points`` (polygon: ``[[x, y], ...]`` in percent of the image size). Predictions, ratings,
``meta``, ``drafts`` and ``image_rotation`` are not used.

The image file is found by that URL: a local-files URL's ``?d=`` path (``/data/local-files/?d=set1/a.jpg``,
relative to Label Studio's LOCAL_FILES_DOCUMENT_ROOT), then the URL's file name (uploads,
``/data/upload/3/1a2b3c4d-photo.png``: also without the 8-hex-digit prefix Label Studio gives them),
beside the JSON and in ``images/`` there, or in the ``--images`` folder (the document root, or the folder
the uploaded files are in).

Classes: the labels used, sorted by name (``--classes`` to choose names and order); overlaps and
unlabelled pixels follow the COCO reader's rule (largest region painted first; ``background`` or
255).
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from labelgen.data.coco import (class_of_name, find_annotation_json, find_image, images_folder, json_head_has, paint,
                                polygons_to_mask, source_classes)
from labelgen.data.folder import LabelledImage
from labelgen.data.io import is_count, read_image, read_json
from labelgen.errors import DataError

SHAPE_TYPES = {"brushlabels": "brushlabels", "polygonlabels": "polygonlabels"}  # result type -> its label field
BRUSH_WORD_BITS = 8
BRUSH_RUN_BITS = (3, 4, 8, 16)  # the four run-length field widths a brush RLE may use (what we write)
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


# ---------------------------------------------------------------- brush RLE
class _Bits:
    def __init__(self, data: bytes, where: str):
        self.bits = "".join(f"{b:08b}" for b in data)
        self.pos = 0
        self.where = where

    def read(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise DataError(f"{self.where}: brush RLE ends early (truncated)")
        value = int(self.bits[self.pos:self.pos + n], 2) if n else 0
        self.pos += n
        return value


def decode_brush_rle(rle: list[int], hw: tuple[int, int], where: str) -> np.ndarray:
    """Label Studio brush RLE -> bool [H, W] (alpha >= 128). Layout: 32-bit value count, 5-bit word size
    - 1, four 4-bit run-field widths - 1, then runs: 1 bit (1 = one value repeated, 0 = literal values),
    2 bits choosing the run-field width, the run length - 1, then the value(s)."""
    try:
        payload = bytes(int(v) for v in rle)
    except (TypeError, ValueError):
        raise DataError(f"{where}: brush RLE must be a list of bytes (0..255)") from None
    bits = _Bits(payload, where)
    count = bits.read(32)
    if count != hw[0] * hw[1] * 4:
        raise DataError(f"{where}: brush RLE of the wrong size ({count} values; the {hw[1]}x{hw[0]} image needs "
                        f"{hw[0] * hw[1] * 4} RGBA values)")
    word = bits.read(5) + 1
    widths = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeated = bits.read(1)
        end = i + 1 + bits.read(widths[bits.read(2)])
        if end > count:
            raise DataError(f"{where}: brush RLE of the wrong size (a run passes the image's {count} values)")
        if repeated:
            out[i:end] = bits.read(word)
        else:
            out[i:end] = [bits.read(word) for _ in range(end - i)]
        i = end
    return out.reshape(hw[0], hw[1], 4)[..., 3] >= 128


def encode_brush_rle(region: np.ndarray) -> list[int]:
    """bool [H, W] -> Label Studio brush RLE (RGBA 255 inside, 0 outside): what a brush export holds."""
    values = np.repeat(np.where(np.asarray(region, bool), 255, 0).astype(np.uint8).ravel(), 4)
    parts = [f"{values.size:032b}", f"{BRUSH_WORD_BITS - 1:05b}", *(f"{w - 1:04b}" for w in BRUSH_RUN_BITS)]
    change = np.flatnonzero(np.diff(values)) + 1
    starts, ends = np.r_[0, change], np.r_[change, values.size]
    longest = 1 << BRUSH_RUN_BITS[-1]
    for start, end in zip(starts.tolist(), ends.tolist()):
        while start < end:
            n = min(end - start, longest)
            field = next(k for k, w in enumerate(BRUSH_RUN_BITS) if n - 1 < 1 << w)
            parts.append(f"1{field:02b}{n - 1:0{BRUSH_RUN_BITS[field]}b}{int(values[start]):0{BRUSH_WORD_BITS}b}")
            start += n
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[k:k + 8], 2) for k in range(0, len(bits), 8)]


# ---------------------------------------------------------------- reader
def looks_like_labelstudio(path: Path) -> bool:
    return json_head_has(path, "[", ("data", "annotations"))


def image_reference(task: dict, where: str) -> str:
    data = task.get("data")
    if not isinstance(data, dict):
        raise DataError(f"{where}: task has no 'data'")
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for v in data.values() if isinstance(v, str)]
    if len(strings) != 1:
        raise DataError(f"{where}: cannot tell which of data's fields {sorted(data)} is the image")
    return strings[0]


def image_file_names(reference: str) -> list[str]:
    """Where the file of a Label Studio image URL may lie, relative to the images folder, most specific first:
    a local-files URL's ``?d=`` path (relative to Label Studio's LOCAL_FILES_DOCUMENT_ROOT), then the file
    name (``/data/upload/3/1a2b3c4d-photo.png``: also without the 8-hex-digit prefix uploads get)."""
    url = urlparse(reference)
    local = parse_qs(url.query).get("d")
    path = unquote(local[0] if local else url.path)
    name = PurePosixPath(path).name
    names = [path.lstrip("/"), name] if local else [name]
    return list(dict.fromkeys([*names, _UPLOAD_PREFIX.sub("", name)]))


class LabelStudioReader:
    """A Label Studio JSON export (SRC = the JSON file, or a folder with one JSON in it or in annotations/)."""

    def __init__(self, src: Path, split: str = "train", unlabelled: str = "background", images: Path | None = None):
        self.json_path = find_annotation_json(Path(src), split, "Label Studio export")
        tasks = read_json(self.json_path)
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise DataError(f"{self.json_path}: not a Label Studio JSON export (expected a list of tasks)")
        self.tasks: list[tuple[str, list[dict], str]] = []  # (where, results, image reference)
        self.skipped_tasks = self.skipped_results = 0
        labels: set[str] = set()
        for k, task in enumerate(tasks):
            where = f"{self.json_path}: task {task.get('id', k)}"
            annotations = task.get("annotations") or []
            if not isinstance(annotations, list):
                raise DataError(f"{where}: 'annotations' must be a list")
            done = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
            if not done:
                self.skipped_tasks += 1
                continue
            found = done[0].get("result") or []
            if not isinstance(found, list):
                raise DataError(f"{where}: 'result' must be a list of results")
            results = []
            for j, r in enumerate(found):
                if not isinstance(r, dict):
                    raise DataError(f"{where}: result {j} is not an object")
                if not isinstance(r.get("type"), str) or r["type"] not in SHAPE_TYPES:
                    self.skipped_results += 1
                    continue
                labels.add(self.checked_label(r, f"{where}: result {r.get('id', '?')}"))
                results.append(r)
            self.tasks.append((where, results, image_reference(task, where)))
        self.classes, self.fill = source_classes(sorted(labels), [None] * len(labels), unlabelled)
        self.root = Path(src) if Path(src).is_dir() else self.json_path.parent  # images are read from inside it
        beside = self.json_path.parent.relative_to(self.root)
        self.folders = list(dict.fromkeys([beside, beside / "images", Path("images")]))
        if images is not None:  # --images DIR: the upload / local-files folder
            self.root, self.folders = images_folder(images), [Path()]

    @staticmethod
    def checked_label(r: dict, where: str) -> str:
        """The label of shape result ``r`` (the first of its list), after checking the fields the reader uses:
        ``value`` an object, the label list a list of names (a bare string would be read letter by letter),
        ``original_width`` / ``original_height`` integers when present."""
        value, field = r.get("value"), SHAPE_TYPES[r["type"]]
        if not isinstance(value, dict):
            raise DataError(f"{where}: 'value' must be an object, not {type(value).__name__}")
        names = value.get(field)
        if not names:
            raise DataError(f"{where}: {r['type']} result has no label")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DataError(f"{where}: '{field}' must be a list of label names, e.g. [\"car\"], not "
                            f"{json.dumps(names)[:40]}")
        for key in ("original_width", "original_height"):
            if r.get(key) is not None and not is_count(r[key]):
                raise DataError(f"{where}: '{key}' must be an integer, not {json.dumps(r[key])[:40]}")
        return names[0]

    def __len__(self) -> int:
        return len(self.tasks)

    def find(self, reference: str, where: str) -> Path:
        return find_image(image_file_names(reference), self.root, self.folders, where)

    def __iter__(self) -> Iterator[LabelledImage]:
        for where, results, reference in self.tasks:
            path = self.find(reference, where)
            image = read_image(path)
            hw = image.shape[:2]
            shapes = []
            for r in results:
                r_where = f"{where}: result {r.get('id', '?')}"
                size = (r.get("original_height"), r.get("original_width"))
                if None not in size and size != hw:
                    raise DataError(f"{r_where}: made on a {size[1]}x{size[0]} image, {path} is {hw[1]}x{hw[0]} (WxH)")
                value = r["value"]
                class_id = class_of_name(self.classes, value[SHAPE_TYPES[r["type"]]][0])
                if r["type"] == "brushlabels":
                    if value.get("format", "rle") != "rle" or "rle" not in value:
                        raise DataError(f"{r_where}: brush result without 'rle'")
                    region = decode_brush_rle(value["rle"], hw, r_where)
                else:
                    try:
                        points = np.asarray(value["points"], dtype=np.float64).reshape(-1, 2)
                    except (KeyError, TypeError, ValueError):
                        raise DataError(f"{r_where}: polygon 'points' must be [[x, y], ...] in percent") from None
                    pixels = points * [hw[1] / 100.0, hw[0] / 100.0]
                    region = polygons_to_mask([pixels.ravel().tolist()], hw, r_where)
                shapes.append((region, class_id))
            yield LabelledImage(path.stem, image, paint(shapes, hw, self.fill), path, self.json_path)

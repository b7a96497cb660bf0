"""``labelgen data export``: a synthetic shard set, a workspace's annotations or a labelled folder, written
in a format other tools train on (one registry, :data:`EXPORT_FORMATS`, feeds the CLI choices).

- ``folder``: the project folder format (``classes.json``, ``<split>/images/*.png``, ``<split>/masks/*.png``).
- ``voc``: ``JPEGImages/<key>.jpg`` (quality 95), ``SegmentationClass/<key>.png`` (palette PNG of class ids,
  255 = void/ignore), ``labelmap.txt`` (CVAT/VOC ``name:r,g,b::``), ``ImageSets/Segmentation/<split>.txt``:
  what mmsegmentation's VOC dataset and CVAT read.
- ``coco``: ``images/<key>.png`` + ``annotations.json`` (data/coco.py: one RLE annotation per image and
  class, every class a category, ignore left unannotated): detectron2's ``register_coco_instances``,
  pycocotools and COCO-stuff tools read it.

Only labelled samples are exported (unlabelled workspace images are counted and skipped); soft labels
and sample metadata are not part of these formats. The output is built under ``OUT.partial`` and
renamed, so ``OUT`` is absent or complete.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from labelgen.data.classes import ClassList
from labelgen.data.io import IGNORE_INDEX, atomic_write_bytes, check_split_name, write_png
from labelgen.errors import DataError

Sample = tuple[str, np.ndarray, np.ndarray]  # key, image uint8 [H, W, 3], mask uint8 [H, W]


def open_export_source(path: Path) -> tuple[ClassList, int, Callable[[], Iterator[Sample | None]]]:
    """(classes, sample count, iterator factory) of a shard set, a workspace or a labelled folder; the
    iterator yields None for an unlabelled image."""
    from labelgen.data.shards import ShardReader, is_shard_set

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    if path.is_dir() and is_shard_set(path):
        reader = ShardReader(path)
        if reader.classes is None:
            raise DataError(f"{path}: shard set without manifest.json (its classes are unknown); finish the run first")
        return reader.classes, len(reader), lambda: ((s.key, s.image, s.mask) for s in reader)
    if (path / "workspace.json").is_file():
        from labelgen.workspace import Workspace

        ws = Workspace(path)

        def annotations():
            for annotation_id in ws.annotation_ids():
                image, _, mask = ws.read_annotation(annotation_id)
                yield None if mask is None else (annotation_id, image, mask)

        return ws.classes, len(ws.annotation_ids()), annotations
    from labelgen.data.folder import open_labelled

    folder = open_labelled(path)
    return folder.classes, len(folder), lambda: (None if it.mask is None else (it.key, it.image, it.mask) for it in folder)


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _safe_key(key: str) -> str:
    return key.replace("/", "_").replace("\\", "_")


def write_folder_format(samples: Iterator[Sample], classes: ClassList, out: Path, split: str) -> int:
    classes.save(out / "classes.json")
    n = 0
    for key, image, mask in samples:
        write_png(out / split / "images" / f"{_safe_key(key)}.png", image)
        write_png(out / split / "masks" / f"{_safe_key(key)}.png", mask, classes.palette)
        n += 1
    return n


def write_voc_format(samples: Iterator[Sample], classes: ClassList, out: Path, split: str) -> int:
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(classes.names, classes.colours)]
    atomic_write_bytes(out / "labelmap.txt", ("\n".join(lines) + "\n").encode())
    keys = []
    for key, image, mask in samples:
        key = _safe_key(key)
        atomic_write_bytes(out / "JPEGImages" / f"{key}.jpg", _jpeg(image))
        write_png(out / "SegmentationClass" / f"{key}.png", mask, classes.palette)
        keys.append(key)
    atomic_write_bytes(out / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{k}\n" for k in keys).encode())
    return len(keys)


def write_coco_format(samples: Iterator[Sample], classes: ClassList, out: Path, split: str) -> int:
    from labelgen.data.coco import write_coco

    items = []
    for key, image, mask in samples:
        name = Path("images") / f"{_safe_key(key)}.png"
        write_png(out / name, image)
        items.append((key, name, mask))
    write_coco(items, classes, out / "annotations.json")
    return len(items)


@dataclass(frozen=True)
class ExportFormat:
    name: str
    write: Callable[[Iterator[Sample], ClassList, Path, str], int]


EXPORT_FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("coco", write_coco_format), ExportFormat("voc", write_voc_format),
    ExportFormat("folder", write_folder_format),
)}


DEFAULT_SPLIT = "train"  # the split of a source that carries none (shard set, workspace, VOC root, flat folder)


def source_split(path: Path) -> str:
    """The split ``path`` holds, kept by the export: a VOC split list's (``ImageSets/Segmentation/val.txt``
    -> val), a project split folder's (``DIR/val`` with ``images/``, the classes file in DIR); else
    :data:`DEFAULT_SPLIT`."""
    from labelgen.data.classes import CLASSES_FILENAMES
    from labelgen.data.folder import voc_split_file

    path = Path(path)
    listed = voc_split_file(path)
    if listed:
        return listed[1]
    has_classes = [any((d / name).is_file() for name in CLASSES_FILENAMES) for d in (path, path.parent)]
    return path.name if (path / "images").is_dir() and has_classes == [False, True] else DEFAULT_SPLIT


def export_dataset(src: Path, out: Path, fmt: str, split: str | None = None,
                   progress: Callable[[], None] | None = None) -> dict:
    """Write ``src`` (shard set, workspace, labelled folder) to ``out`` in format ``fmt`` as split ``split``
    (None: the source's own, :func:`source_split`)."""
    if fmt not in EXPORT_FORMATS:
        raise DataError(f"unknown export format {fmt!r} (known: {', '.join(EXPORT_FORMATS)})")
    split = source_split(Path(src)) if split is None else split
    out, split = Path(out), check_split_name(split)
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new output folder")
    classes, _, samples = open_export_source(Path(src))
    skipped = 0

    def labelled() -> Iterator[Sample]:
        nonlocal skipped
        for sample in samples():
            if progress:
                progress()
            if sample is None:
                skipped += 1
                continue
            key, image, mask = sample
            if ((mask >= len(classes)) & (mask != IGNORE_INDEX)).any():
                raise DataError(f"{src}: sample {key}: class id {int(mask[mask != IGNORE_INDEX].max())} out of range")
            yield sample

    from labelgen.run import new_folder

    with new_folder(out, "labelgen data export") as partial:  # OUT absent or complete; a second export refused
        count = EXPORT_FORMATS[fmt].write(labelled(), classes, partial, split)
        if not count:
            raise DataError(f"{src}: no labelled samples to export")
    return {"format": fmt, "samples": count, "split": split, "skipped_unlabelled": skipped,
            "classes": list(classes.names)}

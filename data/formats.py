"""The formats ``labelgen data import`` reads (one registry: the CLI's ``--format`` choices, detection and
the "unknown layout" message all come from :data:`IMPORT_FORMATS`), and the import itself.

Import writes the project folder format (data/folder.py): ``OUT/classes.json`` and
``OUT/<split>/images/<key>.png`` + ``OUT/<split>/masks/<key>.png``; a second split can be imported into
the same OUT later (its classes must agree). The split is built under ``OUT/<split>.partial`` and
renamed, so ``OUT/<split>`` is absent or complete.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from labelgen.data.classes import CLASSES_FILENAMES, ClassList
from labelgen.data.folder import LabelledImage
from labelgen.data.io import check_split_name, read_json, write_png
from labelgen.data.mapping import ClassMapping
from labelgen.errors import DataError


@dataclass(frozen=True)
class ImportFormat:
    name: str
    layout: str  # one line: what SRC looks like
    looks_like: Callable[[Path], bool]
    # (src, split, unlabelled, the --images folder or None) -> reader with .classes
    open: Callable[[Path, str, str, Path | None], Iterable[LabelledImage]]
    images_elsewhere: bool = False  # its images may live in another folder (--images)


def _open_voc(src: Path, split: str, unlabelled: str, images: Path | None):
    from labelgen.data.folder import VocFolder

    has_lists = (src / "ImageSets" / "Segmentation").is_dir()
    return VocFolder(src, split=split if has_lists else None, require_masks=True)


def _open_folder(src: Path, split: str, unlabelled: str, images: Path | None):
    from labelgen.data.folder import open_labelled

    return open_labelled(src, require_masks=True, split=split if (src / split).is_dir() else None)


def _open_coco(src: Path, split: str, unlabelled: str, images: Path | None):
    from labelgen.data.coco import CocoReader

    return CocoReader(src, split, unlabelled, images)


def _open_cityscapes(src: Path, split: str, unlabelled: str, images: Path | None):
    from labelgen.data.cityscapes import CityscapesReader

    return CityscapesReader(src, split, unlabelled)


def _open_labelstudio(src: Path, split: str, unlabelled: str, images: Path | None):
    from labelgen.data.labelstudio import LabelStudioReader

    return LabelStudioReader(src, split, unlabelled, images)


def _looks_like_coco(path: Path) -> bool:
    from labelgen.data.coco import looks_like_coco

    return looks_like_coco(path)


def _looks_like_cityscapes(path: Path) -> bool:
    from labelgen.data.cityscapes import looks_like_cityscapes

    return looks_like_cityscapes(path)


def _looks_like_labelstudio(path: Path) -> bool:
    from labelgen.data.labelstudio import looks_like_labelstudio

    return looks_like_labelstudio(path)


def _looks_like_folder(path: Path) -> bool:
    return any((d / name).is_file() for d in (path, path.parent) for name in CLASSES_FILENAMES)


IMPORT_FORMATS: dict[str, ImportFormat] = {f.name: f for f in (
    ImportFormat("coco", "a COCO JSON (images, annotations, categories) + its images", _looks_like_coco, _open_coco,
                 images_elsewhere=True),
    ImportFormat("cityscapes", "gtFine/<split>/<city>/*_labelIds.png + leftImg8bit/", _looks_like_cityscapes,
                 _open_cityscapes),
    ImportFormat("labelstudio", "a Label Studio JSON export (list of tasks) + its images", _looks_like_labelstudio,
                 _open_labelstudio, images_elsewhere=True),
    ImportFormat("voc", "JPEGImages/ + SegmentationClass/ [+ labelmap.txt, ImageSets/Segmentation/<split>.txt]",
                 lambda p: (p / "JPEGImages").is_dir(), _open_voc),
    ImportFormat("folder", "classes.json (or labelmap.txt, classes.txt) + [<split>/]images/ + masks/",
                 _looks_like_folder, _open_folder),
)}
AUTO = "auto"


def known_layouts() -> str:
    return "; ".join(f"{f.name}: {f.layout}" for f in IMPORT_FORMATS.values())


def detect_format(src: Path) -> str:
    """The name of the first format ``src`` looks like; an error naming the known ones otherwise."""
    if not src.exists():
        raise DataError(f"{src}: not found")
    for fmt in IMPORT_FORMATS.values():
        if fmt.looks_like(src):
            return fmt.name
    if (src / "photos").is_dir() and (src / "annotations").is_dir():
        raise DataError(f"{src}: raw CCP layout; convert it with `labelgen data import-ccp`")
    raise DataError(f"{src}: unknown dataset layout (known: {known_layouts()})")


def check_readable_layout(path: Path) -> None:
    """For readers of the project format: a folder of another known format is reported as such, and one
    of no known format as unknown (instead of 'missing classes file'); a folder of images without a
    classes file is left to the folder reader's message."""
    if _looks_like_folder(path):
        return
    for fmt in IMPORT_FORMATS.values():
        if fmt.name != "folder" and fmt.looks_like(path):
            raise DataError(f"{path}: a {fmt.name} dataset; convert it first with "
                            f"`labelgen data import --format {fmt.name} {path} --out DIR`")
    from labelgen.data.io import list_images

    if (path / "images").is_dir() or (path.is_dir() and list_images(path)):
        return
    detect_format(path)  # raises: unknown layout, naming the known ones


def import_dataset(src: Path, out: Path, fmt: str = AUTO, split: str = "train", size_hw: tuple[int, int] | None = None,
                   mapping: ClassMapping | None = None, unlabelled: str = "background",
                   progress: Callable[[], None] | None = None, images: Path | None = None) -> dict:
    """Read ``src`` in format ``fmt`` and write split ``split`` of the project folder ``out``; ``images``: the
    folder SRC's images are in when not beside it (COCO, Label Studio)."""
    src, out, split = Path(src), Path(out), check_split_name(split)
    fmt = detect_format(src) if fmt == AUTO else fmt
    if fmt not in IMPORT_FORMATS:
        raise DataError(f"unknown format {fmt!r} (known: {', '.join(IMPORT_FORMATS)})")
    if not src.exists():
        raise DataError(f"{src}: not found")
    if images is not None and not IMPORT_FORMATS[fmt].images_elsewhere:
        takes = ", ".join(f.name for f in IMPORT_FORMATS.values() if f.images_elsewhere)
        raise DataError(f"--images {images}: only {takes} imports read their images from another folder ({src} is {fmt})")
    reader = IMPORT_FORMATS[fmt].open(src, split, unlabelled, images)
    source: ClassList = reader.classes  # type: ignore[attr-defined]
    classes, lut = mapping.apply(source, str(src)) if mapping else (source, None)
    from labelgen.run import RunLock

    with RunLock(out, "labelgen data import"):  # a second import into OUT meanwhile is refused
        if (out / "classes.json").is_file():
            existing = ClassList.from_json(read_json(out / "classes.json"), str(out / "classes.json"))
            if existing.names != classes.names:
                raise DataError(f"{out}/classes.json: classes {list(existing.names)} differ from this import's "
                                f"{list(classes.names)}")
        target = out / split
        if target.exists():
            raise DataError(f"{target}: already exists; choose another --split or --out")
        partial = out / f"{split}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        try:
            count = _write_split(reader, partial, classes, lut, size_hw, progress)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if not count:
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(f"{src}: no labelled images to import")
        if not (out / "classes.json").is_file():
            classes.save(out / "classes.json")
        os.replace(partial, target)
    summary = {"format": fmt, "images": count, "split": split, "classes": list(classes.names)}
    for name in ("skipped_tasks", "skipped_results"):
        if getattr(reader, name, 0):
            summary[name] = getattr(reader, name)
    return summary


def _write_split(reader, partial: Path, classes: ClassList, lut, size_hw, progress) -> int:
    from labelgen.imaging import fit_photo

    keys: set[str] = set()
    count = 0
    for item in reader:
        image, mask = item.image, item.mask
        if lut is not None and mask is not None:
            mask = lut[mask]
        if size_hw is not None:
            image, mask = fit_photo(image, size_hw, mask)
        key, n = item.key, 2
        while key in keys:  # the same file name in two folders (COCO subfolders, cities)
            key, n = f"{item.key}_{n}", n + 1
        keys.add(key)
        write_png(partial / "images" / f"{key}.png", image)
        if mask is not None:
            write_png(partial / "masks" / f"{key}.png", mask, classes.palette)
        count += 1
        if progress:
            progress()
    return count

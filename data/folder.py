"""Labelled image folders: the project's own format and VOC / CVAT palette-PNG exports.

Project format (what ``labelgen data import-ccp`` writes and every command reads for real data)::

    DIR/classes.json                 names + colours (or labelmap.txt / classes.txt)
    DIR/<split>/images/NNNN.png      RGB images
    DIR/<split>/masks/NNNN.png       index masks: 0..C-1, 255 = ignore (absent for unlabelled splits)

A split folder (``DIR/<split>``) or any folder with ``images/`` (+ ``masks/``) is read the same way;
the classes file is looked up in the folder, then its parent. A flat folder of ``<id>.png`` +
``<id>.mask.png`` (the workspace annotation store) is read too.

VOC / CVAT layout (``Segmentation mask 1.1`` export)::

    DIR/JPEGImages/*.jpg   DIR/SegmentationClass/*.png   [DIR/labelmap.txt]   [DIR/ImageSets/Segmentation/<split>.txt]

Masks may be palette ('P') PNGs whose indices are the class ids (VOC), or RGB colour PNGs mapped
through the class colours (CVAT). The classes: labelmap.txt, else labelme2voc.py's class_names.txt
(``_background_`` read as ``background``; its masks may sit in SegmentationClassPNG/), else the 21 VOC
classes (said in a one-line notice).

Binary masks stored as 0/255 (foreground masks, matting and horse data sets): a folder with two
classes whose masks hold only 0 and 255 (judged on up to 16 masks spread over the folder) reads 255 as
class 1, with a one-line warning; a class-1 pixel in such a folder is then an error (one convention
per folder). Any other folder keeps 255 = ignore.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from labelgen.data.classes import (LABELME_CLASSES, ClassList, default_colour, find_classes_file, read_classes_file,
                                   read_labelme_classes)
from labelgen.data.io import IGNORE_INDEX, check_mask, list_images, read_image, read_mask_pixels
from labelgen.errors import DataError, notice

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
BINARY_SAMPLE = 16  # masks looked at to recognise a 0/255 binary-mask folder


@dataclass
class LabelledImage:
    key: str
    image: np.ndarray  # [H, W, 3] uint8 RGB
    mask: np.ndarray | None  # [H, W] uint8 class ids, 255 = ignore; None when unlabelled
    image_path: Path | None = None
    mask_path: Path | None = None


class LabelledFolder(Sequence[LabelledImage]):
    """Images with optional index masks, read lazily and validated on access.

    ``require_masks``: every image must have a mask (training/evaluation sets)."""

    def __init__(self, root: Path | str, classes: ClassList | None = None, require_masks: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        if (self.root / "JPEGImages").is_dir():
            raise DataError(f"{self.root}: looks like a VOC/CVAT export; read it with VocFolder")
        self.classes = classes or read_classes_file(find_classes_file(self.root, self.root.parent))
        if (self.root / "images").is_dir():
            image_dir, mask_dir, mask_suffix = self.root / "images", self.root / "masks", ".png"
        else:  # flat: <id>.png + <id>.mask.png
            image_dir, mask_dir, mask_suffix = self.root, self.root, ".mask.png"
        self.image_paths = list_images(image_dir)
        if not self.image_paths:
            splits = sorted(p.name for p in self.root.iterdir() if (p / "images").is_dir())
            if splits:  # DIR itself, not one of its splits
                raise DataError(f"{self.root}: a dataset with splits {', '.join(splits)}; give one split folder, "
                                f"e.g. {self.root / splits[-1]}")
            raise DataError(f"{image_dir}: empty folder (no images)")
        self.mask_paths: list[Path | None] = []
        for p in self.image_paths:
            m = mask_dir / (p.stem + mask_suffix)
            if not m.is_file() and require_masks:
                raise DataError(f"{m}: mask missing for image {p.name}")
            self.mask_paths.append(m if m.is_file() else None)
        self.binary_255 = self._is_binary_255()

    def _is_binary_255(self) -> bool:
        """Two classes and (sampled) masks of only 0 and 255: 255 is the foreground, not ignore."""
        labelled = [p for p in self.mask_paths if p is not None]
        if len(self.classes) != 2 or not labelled:
            return False
        values: set[int] = set()
        for path in labelled[::max(1, len(labelled) // BINARY_SAMPLE)][:BINARY_SAMPLE]:
            pixels = read_mask_pixels(path)
            if pixels.ndim != 2:
                return False
            values |= set(np.unique(pixels).tolist())
        if not (values <= {0, IGNORE_INDEX} and IGNORE_INDEX in values):
            return False
        notice(f"{self.root}: 2 classes and masks of only 0 and 255: reading 255 as class 1 "
               f"{self.classes.names[1]!r} (a binary foreground mask), not as ignore")
        return True

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def labelled_count(self) -> int:
        return sum(m is not None for m in self.mask_paths)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        image = read_image(self.image_paths[i])
        mask = None
        if self.mask_paths[i] is not None:
            mask = _index_mask(read_mask_pixels(self.mask_paths[i]), self.classes, self.mask_paths[i])
            if self.binary_255:
                if (mask == 1).any():
                    raise DataError(f"{self.mask_paths[i]}: has class-1 pixels while this folder's masks use 0/255 "
                                    f"(255 = foreground); use one convention")
                mask = np.where(mask == IGNORE_INDEX, 1, mask).astype(np.uint8)
            check_mask(mask, image.shape, len(self.classes), self.mask_paths[i])
        return LabelledImage(self.image_paths[i].stem, image, mask, self.image_paths[i], self.mask_paths[i])

    def __iter__(self) -> Iterator[LabelledImage]:
        return (self[i] for i in range(len(self)))


class VocFolder(LabelledFolder):
    """VOC / CVAT 'Segmentation mask' export (see module docstring); ``split`` reads ImageSets."""

    def __init__(self, root: Path | str, split: str | None = None, classes: ClassList | None = None,
                 require_masks: bool = True):
        self.root = Path(root)
        jpeg, seg = self.root / "JPEGImages", self.root / "SegmentationClass"
        if not any(seg.glob("*.png")) and (self.root / "SegmentationClassPNG").is_dir():
            seg = self.root / "SegmentationClassPNG"  # older labelme2voc.py: .npy in SegmentationClass/
        if not jpeg.is_dir():
            raise DataError(f"{self.root}: not a VOC/CVAT export (no JPEGImages/)")
        if classes is None:
            if (self.root / "labelmap.txt").is_file():
                classes = read_classes_file(self.root / "labelmap.txt")
            elif (self.root / LABELME_CLASSES).is_file():  # labelme2voc.py's output
                classes = read_labelme_classes(self.root / LABELME_CLASSES)
            else:
                notice(f"{self.root}: no labelmap.txt or {LABELME_CLASSES}: assuming the 21 VOC classes")
                classes = ClassList(VOC_CLASSES, tuple(default_colour(i) for i in range(len(VOC_CLASSES))))
        self.classes = classes
        if split is not None:
            listing = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not listing.is_file():
                raise DataError(f"{listing}: split list not found")
            images = list_images(jpeg)
            by_name = {**{p.stem: p for p in images}, **{p.name: p for p in images}}
            self.image_paths = []
            for line_no, name in voc_list_entries(listing):
                if name not in by_name:
                    raise DataError(f"{listing}:{line_no}: image {name!r} not in {jpeg}")
                self.image_paths.append(by_name[name])
            if not self.image_paths:
                raise DataError(f"{listing}: the split list names no images")
        else:
            self.image_paths = list_images(jpeg)
        if not self.image_paths:
            raise DataError(f"{jpeg}: empty folder (no images)")
        self.mask_paths = []
        for p in self.image_paths:
            m = seg / (p.stem + ".png")
            if not m.is_file() and require_masks:
                raise DataError(f"{m}: mask missing for image {p.name}")
            self.mask_paths.append(m if m.is_file() else None)
        self.binary_255 = self._is_binary_255()


def _index_mask(pixels: np.ndarray, classes: ClassList, path: Path) -> np.ndarray:
    """Index ('L'/'P') masks pass through; colour masks are mapped through the class colours."""
    return pixels if pixels.ndim == 2 else classes.colour_to_index(pixels, path)


def voc_list_entries(listing: Path) -> list[tuple[int, str]]:
    """(line number, image) for each line of a VOC split list: its first word, a stem (``2007_000032``) or a
    file name (``001.png``; of a path such as ``/JPEGImages/001.jpg``, the file name). Lines may end in CRLF;
    a UTF-8 byte-order mark is dropped."""
    try:
        text = listing.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{listing}: not a UTF-8 text file") from None
    return [(line_no, PurePosixPath(words[0].replace("\\", "/")).name)
            for line_no, words in enumerate((line.split() for line in text.splitlines()), 1) if words]


def voc_split_file(path: Path) -> tuple[Path, str] | None:
    """(VOC root, split) when ``path`` is a VOC split list ``ROOT/ImageSets/Segmentation/<split>.txt``."""
    if path.is_file() and path.suffix == ".txt" and path.parent.name == "Segmentation" \
            and path.parent.parent.name == "ImageSets":
        return path.parents[2], path.stem
    return None


def open_labelled(path: Path | str, require_masks: bool = False, split: str | None = None) -> LabelledFolder:
    """Open any supported labelled-image folder (project format, split folder, flat, VOC/CVAT; a VOC
    split list ``ROOT/ImageSets/Segmentation/<split>.txt`` opens that split)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found")
    if voc_split_file(path):
        root, split = voc_split_file(path)  # type: ignore[misc]
        return VocFolder(root, split=split, require_masks=require_masks)
    if (path / "JPEGImages").is_dir():
        return VocFolder(path, split=split, require_masks=require_masks)
    if split is not None:
        path = path / split
        if not path.is_dir():
            raise DataError(f"{path}: split folder not found")
    if (path / "photos").is_dir() and (path / "annotations").is_dir():
        raise DataError(f"{path}: raw CCP layout; convert it first with `labelgen data import-ccp`")
    from labelgen.data.formats import check_readable_layout

    check_readable_layout(path)
    return LabelledFolder(path, require_masks=require_masks)


MOSTLY_IGNORED = 0.5  # `data info` warns when more than this share of the mask pixels is 255


def pixel_statistics(folder: LabelledFolder) -> tuple[list[str], list[str]]:
    """Per-class pixel fractions of a folder's masks (lines to print) and warnings: a class without
    pixels, most pixels ignored."""
    counts = np.zeros(256, dtype=np.int64)
    for item in folder:
        if item.mask is not None:
            counts += np.bincount(item.mask.ravel(), minlength=256)
    total = int(counts.sum())
    if not total:
        return [], ["no masks"]
    labelled = max(1, total - int(counts[IGNORE_INDEX]))
    lines = [f"  {name}: {counts[i] / labelled:.1%} of labelled pixels" for i, name in enumerate(folder.classes.names)]
    lines.append(f"  ignore (255): {counts[IGNORE_INDEX] / total:.1%} of all mask pixels")
    warnings_ = [f"class {name!r} has no pixels in {folder.root}" for i, name in enumerate(folder.classes.names)
                 if counts[i] == 0]
    if counts[IGNORE_INDEX] > MOSTLY_IGNORED * total:
        warnings_.append(f"{counts[IGNORE_INDEX] / total:.0%} of the mask pixels in {folder.root} are 255 (ignore)")
    return lines, warnings_

"""Cityscapes fine annotations: ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png`` with the images at
``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``.

Only the ``*_labelIds.png`` files are read (``*_color.png``, ``*_instanceIds.png``, ``*_polygons.json``
are not used). Label ids become the 19 evaluation ("train") classes of the Cityscapes benchmark; every
other id (unlabeled, ego vehicle, parking, guard rail, caravan, license plate, ...) becomes 255 =
ignore. An id above 33 is an error naming the file.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from labelgen.data.classes import ClassList
from labelgen.data.folder import LabelledImage
from labelgen.data.io import IGNORE_INDEX, read_image, read_mask_pixels
from labelgen.errors import DataError

# (name, label id, colour) of the 19 train classes, in train-id order (the dataset's labels.py table)
TRAIN_CLASSES = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)), ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)
LAST_LABEL_ID = 33
CITYSCAPES_CLASSES = ClassList(tuple(n for n, _, _ in TRAIN_CLASSES), tuple(c for _, _, c in TRAIN_CLASSES))
LABEL_SUFFIX, IMAGE_SUFFIX = "_gtFine_labelIds.png", "_leftImg8bit.png"


def train_id_lut() -> np.ndarray:
    """uint8 [256]: label id -> train id (0..18), 255 for the ignored ids."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, (_, label_id, _) in enumerate(TRAIN_CLASSES):
        lut[label_id] = train_id
    return lut


def looks_like_cityscapes(path: Path) -> bool:
    return (path / "gtFine").is_dir() and (path / "leftImg8bit").is_dir()


class CityscapesReader:
    """One split (``train``, ``val``, ``test``) of a Cityscapes folder, as train-id masks."""

    def __init__(self, src: Path, split: str = "train", unlabelled: str = "ignore"):
        self.root = Path(src)
        if not looks_like_cityscapes(self.root):
            raise DataError(f"{self.root}: not a Cityscapes folder (needs gtFine/ and leftImg8bit/)")
        split_dir = self.root / "gtFine" / split
        if not split_dir.is_dir():
            have = sorted(p.name for p in (self.root / "gtFine").iterdir() if p.is_dir())
            raise DataError(f"{split_dir}: split not found (has: {', '.join(have) or 'none'})")
        self.label_paths = sorted(split_dir.glob(f"*/*{LABEL_SUFFIX}"))
        if not self.label_paths:
            raise DataError(f"{split_dir}: no <city>/*{LABEL_SUFFIX} files")
        self.split = split
        self.classes = CITYSCAPES_CLASSES
        self.lut = train_id_lut()

    def __len__(self) -> int:
        return len(self.label_paths)

    def image_path(self, label_path: Path) -> Path:
        name = label_path.name.removesuffix(LABEL_SUFFIX)
        return self.root / "leftImg8bit" / self.split / label_path.parent.name / (name + IMAGE_SUFFIX)

    def __iter__(self) -> Iterator[LabelledImage]:
        for label_path in self.label_paths:
            image_path = self.image_path(label_path)
            if not image_path.is_file():
                raise DataError(f"{label_path}: its image {image_path} is missing")
            image = read_image(image_path)
            ids = read_mask_pixels(label_path)
            if ids.ndim != 2:
                raise DataError(f"{label_path}: expected a single-channel label id PNG")
            if ids.max(initial=0) > LAST_LABEL_ID:
                raise DataError(f"{label_path}: label id {int(ids.max())} is not a Cityscapes label (0..{LAST_LABEL_ID})")
            if ids.shape != image.shape[:2]:
                raise DataError(f"{label_path}: size {ids.shape[1]}x{ids.shape[0]} differs from its image's "
                                f"{image.shape[1]}x{image.shape[0]} (WxH)")
            yield LabelledImage(image_path.name.removesuffix(IMAGE_SUFFIX), image, self.lut[ids], image_path, label_path)

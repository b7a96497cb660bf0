"""Augmentation policies of the student's training data (``student train --augment-policy``).

``basic`` (default): horizontal flip + a mild affine (scale 0.85-1.15, shift 5 %, rotation 10 degrees;
albumentations: image bilinear, hard mask nearest, soft labels as an extra float image, zero fill = ignored)
and a mild colour jitter, as before.

``strong`` (:class:`StrongAugment`): a random crop of 35-100 % of the sample's area with aspect jitter, taken
from the stored sample at its own resolution and resized to the training size by the project's one resize rule
(labelgen.imaging: image and soft labels area/bicubic, hard mask nearest), so image, mask and soft labels
stay pixel-aligned without any interpolation of label ids; a horizontal flip (exact for every target); then,
on the image only, a strong colour jitter, occasional greyscale and blur. Every draw comes from the sample's
seed (seed, epoch, index, copy), so a resumed run sees the same batches.

Feature-distillation modes take no geometric part (the generator's features of the original image must stay
aligned): only the colour part of either policy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from labelgen.data.io import IGNORE_INDEX

AUGMENT_POLICIES = ("basic", "strong")


@dataclass(frozen=True)
class StrongAugment:
    """The ``strong`` policy's parameters (stated once here)."""

    crop_area: tuple[float, float] = (0.35, 1.0)  # crop area as a fraction of the sample's
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect relative to the sample's
    flip: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grey_p: float = 0.1
    blur_p: float = 0.2

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of a random crop inside [height, width]."""
        area = rng.uniform(*self.crop_area)
        aspect = math.exp(rng.uniform(math.log(self.crop_aspect[0]), math.log(self.crop_aspect[1])))
        ch = min(height, max(1, round(height * math.sqrt(area / aspect))))
        cw = min(width, max(1, round(width * math.sqrt(area * aspect))))
        top = int(rng.integers(0, height - ch + 1))
        left = int(rng.integers(0, width - cw + 1))
        return top, left, ch, cw


def build_augment(policy: str, geometric: bool, colour: bool):
    """(geometric Compose over image + mask + soft, colour Compose over the image only) applied after the resize
    to the training size; the ``strong`` policy's crop comes before it (:meth:`StrongAugment.crop_box`)."""
    import albumentations as A
    import cv2

    if policy not in AUGMENT_POLICIES:
        from labelgen.errors import LabelgenError

        raise LabelgenError(f"unknown augmentation policy {policy!r} (one of {', '.join(AUGMENT_POLICIES)})")
    geo, col = [], []
    if policy == "basic":
        if geometric:
            geo += [A.HorizontalFlip(p=0.5),
                    A.Affine(scale=(0.85, 1.15), translate_percent=(-0.05, 0.05), rotate=(-10, 10), p=0.5,
                             border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX)]
        if colour:
            col = [A.ColorJitter(0.2, 0.2, 0.2, 0.02, p=0.5)]
    else:
        strong = StrongAugment()
        if geometric:
            geo += [A.HorizontalFlip(p=strong.flip)]
        if colour:
            col = [A.ColorJitter(*strong.jitter, p=strong.jitter_p), A.ToGray(p=strong.grey_p),
                   A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.1, 1.5), p=strong.blur_p)]
    return A.Compose(geo, additional_targets={"soft": "image"}), A.Compose(col)

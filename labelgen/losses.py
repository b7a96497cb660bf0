"""Loss weighting shared by the teacher's heads (``train-heads --class-balance``) and the students
(``student train --class-balance``)."""
from __future__ import annotations

import numpy as np
import torch

from labelgen.data.io import IGNORE_INDEX


def class_balance_weights(frequencies: torch.Tensor, power: float, max_weight: float = 10.0) -> torch.Tensor:
    """Per-class loss weights w_c ~ f_c^-power, scaled so the pixel-weighted mean sum_c f_c w_c is 1.

    ``frequencies`` [C]: each class's share of the training pixels. power 0 = no balancing, 0.5 = inverse
    square root of the frequency, 1 = inverse frequency. Classes absent from the data get weight 1, and no
    weight exceeds ``max_weight`` (a class seen on a handful of pixels must not dominate)."""
    f = frequencies.double().clamp_min(0)
    f = f / f.sum().clamp_min(1e-12)
    present = f > 0
    w = torch.ones_like(f)
    w[present] = f[present] ** -power
    w = w / (f * w).sum()
    w[~present] = 1.0
    return w.clamp(max=max_weight).float()


def mask_class_frequencies(masks, num_classes: int) -> np.ndarray:
    """Each class's share of the labelled pixels (255 = ignored) over index masks uint8 [H, W] -> float64 [C]."""
    counts = np.zeros(num_classes, np.float64)
    for mask in masks:
        labelled = np.asarray(mask)
        labelled = labelled[labelled != IGNORE_INDEX]
        counts += np.bincount(labelled.ravel(), minlength=num_classes)[:num_classes]
    return counts / max(1.0, counts.sum())

"""Assisted annotation, computed on the server without downloads: superpixels (scikit-image) and the teacher's
prediction, sent to the canvas (app/canvas.py) as label maps.

    labels = superpixels(image, "slic", size=8)   # int32 [H, W], 0..K-1, segments of about size x size pixels

On the canvas, a click with the superpixel tool fills the segment under the cursor with the current class;
the teacher tool gives the clicked segment (or a dragged rectangle) the heads' predicted classes
(``labelgen.app.heads_bridge.predict_annotation``, the workspace's Teacher).
"""
from __future__ import annotations

import numpy as np

from labelgen.app.core import AppError

SUPERPIXEL_SIZES = (4, 64)  # the size slider's range: segment side in pixels
DEFAULT_SUPERPIXEL_SIZE = 8


def _slic(image: np.ndarray, size: int) -> np.ndarray:
    from skimage.segmentation import slic

    h, w = image.shape[:2]
    return slic(image, n_segments=max(1, (h * w) // (size * size)), compactness=10.0, start_label=0,
                channel_axis=-1)


def _felzenszwalb(image: np.ndarray, size: int) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=float(10 * size), sigma=0.5, min_size=max(2, size * size // 2))


# method name (the app's choice) -> fn(image uint8 [H, W, 3], size) -> labels [H, W]
SUPERPIXELS = {"SLIC": _slic, "Felzenszwalb": _felzenszwalb}


def superpixels(image: np.ndarray, method: str, size: int = DEFAULT_SUPERPIXEL_SIZE) -> np.ndarray:
    """Superpixel labels int32 [H, W] (0..K-1, every pixel in exactly one segment) of an RGB uint8 image."""
    if method not in SUPERPIXELS:
        raise AppError(f"unknown superpixel method {method!r} (one of {', '.join(SUPERPIXELS)})")
    lo, hi = SUPERPIXEL_SIZES
    if not lo <= int(size) <= hi:
        raise AppError(f"superpixel size {size}: expected {lo}..{hi} pixels")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    labels = np.asarray(SUPERPIXELS[method](image, int(size)))
    _, dense = np.unique(labels, return_inverse=True)  # 0..K-1 without gaps
    return dense.reshape(labels.shape).astype(np.int32)

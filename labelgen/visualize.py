"""Pictures people look at: class colours, mask overlays and image grids (one implementation).

Used by the demo, synthesis previews, student evaluation, generator training sample grids and the
app. All functions take and return uint8 numpy images ``[H, W, 3]``.
"""
from __future__ import annotations

import math

import numpy as np

from labelgen.data.io import IGNORE_INDEX


def colourise(mask: np.ndarray, palette) -> np.ndarray:
    """Class ids [H, W] -> RGB [H, W, 3]; ids without a colour (incl. 255 = ignore) are white."""
    lut = np.full((256, 3), 255, np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """The mask's class colours blended over the image. Ignore (255) pixels and classes coloured
    black (the usual background colour) stay clear, so the picture is not darkened."""
    assert image.shape[:2] == mask.shape, (image.shape, mask.shape)
    colours = colourise(mask, palette).astype(np.float32)
    labelled = ((mask != IGNORE_INDEX) & colours.any(-1))[..., None]
    out = np.where(labelled, (1 - alpha) * image.astype(np.float32) + alpha * colours, image.astype(np.float32))
    return out.round().clip(0, 255).astype(np.uint8)


def grid(tiles: list[np.ndarray], cols: int | None = None, gap: int = 2, background: int = 255) -> np.ndarray:
    """Equal-sized tiles [H, W, 3] laid out row-major with ``gap``-pixel borders."""
    assert tiles, "grid of no tiles"
    h, w = tiles[0].shape[:2]
    cols = cols or int(math.ceil(math.sqrt(len(tiles))))
    rows = int(math.ceil(len(tiles) / cols))
    out = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), background, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        assert tile.shape[:2] == (h, w), f"tile {i} is {tile.shape[:2]}, expected {(h, w)}"
        r, c = divmod(i, cols)
        out[gap + r * (h + gap): gap + r * (h + gap) + h, gap + c * (w + gap): gap + c * (w + gap) + w] = tile
    return out


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement (small thumbnails stay crisp)."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


"""Image helpers: the one conversion between uint8 pictures and model tensors, and the one resize rule.

    images_to_tensor(uint8 [N, H, W, 3])         -> float32 [N, 3, H, W] in [-1, 1]
    tensor_to_uint8(float [N, 3, H, W] in [-1, 1]) -> uint8 [N, H, W, 3]
    resize_image(image, (h, w))                    images and other continuous maps (soft labels)
    resize_mask(mask, (h, w))                      index masks

**The resize rule** (used by every stage: data import, workspace import, teacher features of real images,
student training, evaluation and prediction):

* images and continuous maps: bilinear with antialiasing (``F.interpolate(..., mode="bilinear",
  align_corners=False, antialias=True)``): a triangle filter over the source footprint, i.e. area-like
  averaging when shrinking and plain bilinear when enlarging; uint8 inputs are rounded and clamped back;
* index masks: nearest neighbour at pixel centres (``mode="nearest-exact"``), so no class id is invented.

Both accept numpy arrays ``[H, W, C]`` / ``[H, W]`` (uint8 or float) and torch tensors ``[N, C, H, W]`` /
``[N, H, W]``; the result has the input's type and dtype.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

Size = tuple[int, int]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 tensor [N, 3, H, W] in [-1, 1]."""
    assert images.ndim == 4 and images.shape[-1] == 3, images.shape
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float tensor [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    assert images.ndim == 4 and images.shape[1] == 3, tuple(images.shape)
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def quantize(images: torch.Tensor) -> torch.Tensor:
    """float [N, 3, H, W] in [-1, 1] -> the same images as they are after a round trip through uint8 (the
    values a stored PNG gives back), so features of a fresh sample equal features of its saved file."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _check_size(size_hw) -> Size:
    h, w = (int(v) for v in size_hw)
    assert h > 0 and w > 0, size_hw
    return h, w


def resize_image(image, size_hw: Size):
    """Image or continuous map -> ``size_hw`` (H, W) by the resize rule (module docstring).

    numpy [H, W, C] or [H, W] (uint8 or float), or a tensor [N, C, H, W]; returns the same kind."""
    h, w = _check_size(size_hw)
    if isinstance(image, torch.Tensor):
        assert image.ndim == 4, tuple(image.shape)
        if tuple(image.shape[-2:]) == (h, w):
            return image
        out = F.interpolate(image.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if image.dtype == torch.uint8:
            return out.round().clamp(0, 255).to(torch.uint8)
        return out.to(image.dtype)
    array = np.asarray(image)
    if array.shape[:2] == (h, w):
        return array
    planar = array[:, :, None] if array.ndim == 2 else array  # [H, W, C]
    x = torch.from_numpy(np.ascontiguousarray(planar, dtype=np.float32)).permute(2, 0, 1)[None]  # [1, C, H, W]
    out = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0].permute(1, 2, 0)
    out = out.numpy()
    if array.dtype == np.uint8:
        out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    else:
        out = out.astype(array.dtype, copy=False)
    return out[:, :, 0] if array.ndim == 2 else out


def resize_mask(mask, size_hw: Size):
    """Index mask -> ``size_hw`` (H, W), nearest neighbour at pixel centres (never invents class ids).

    numpy [H, W] (any integer dtype) or a tensor [N, H, W]; returns the same kind and dtype."""
    h, w = _check_size(size_hw)
    if isinstance(mask, torch.Tensor):
        assert mask.ndim == 3, tuple(mask.shape)
        if tuple(mask.shape[-2:]) == (h, w):
            return mask
        return F.interpolate(mask[:, None].float(), size=(h, w), mode="nearest-exact")[:, 0].to(mask.dtype)
    array = np.asarray(mask)
    assert array.ndim == 2, array.shape
    if array.shape == (h, w):
        return array
    return resize_mask(torch.from_numpy(array.astype(np.int64))[None], (h, w))[0].numpy().astype(array.dtype)

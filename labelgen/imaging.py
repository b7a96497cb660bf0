"""Image helpers: the one conversion between uint8 pictures and model tensors, and the one resize rule.

    images_to_tensor(uint8 [N, H, W, 3])         -> float32 [N, 3, H, W] in [-1, 1]
    tensor_to_uint8(float [N, 3, H, W] in [-1, 1]) -> uint8 [N, H, W, 3]
    resize_image(image, (h, w))                    images and other continuous maps (soft labels, logits)
    resize_mask(mask, (h, w))                      index masks
    mirror_image(array)                            the horizontal mirror image (flip augmentation and TTA)
    fit_photo(image, (h, w), mask)                 a real photo (+ its mask) brought to a model's size: the rule below

**The resize rule** (used by every stage: data import, workspace import, teacher features of real images,
generator training data, student training, evaluation and prediction), the benchmark's own (CCP DATACARD):

* images and continuous maps: **area averaging when shrinking, bicubic when enlarging** (Pillow's BOX and
  BICUBIC filters; BICUBIC also when one side shrinks and the other grows). uint8 RGB/grey images go through
  Pillow directly; float maps and other channel counts channel by channel in Pillow's float mode;
* index masks: **nearest neighbour at pixel centres** (Pillow's NEAREST), so no class id is invented.

Both accept numpy arrays ``[H, W, C]`` / ``[H, W]`` and torch tensors ``[N, C, H, W]`` / ``[N, H, W]``; the
result has the input's type, dtype and device.

**The photo rule** (:func:`fit_photo`; `labelgen import`, the app's import, ``synthesize --from-images``, teacher
evaluation, generator training data, the student's training data and prediction): the **whole** photo is stretched
to the size, the image by the resize rule, its mask by nearest neighbour. Nothing is cropped, so every pixel of the
photo is labelled and labels map back onto the whole photo (the student's scores are resized back to its own size).
A photo whose aspect ratio differs from the size's by more than 25 % is stretched all the same, with a one-line
notice (a UserWarning, once per photo size and call site): crop it first to keep its proportions.
"""
from __future__ import annotations

import numpy as np
import torch

Size = tuple[int, int]
MAX_SIZE_PIXELS = 4096 * 4096  # largest H*W a command is asked to make images at (--size, --image-size, ...)


def size_problem(size_hw: Size) -> str | None:
    """Why (H, W) cannot be a size to make images at (None: it can): both sides positive, at most
    MAX_SIZE_PIXELS pixels (a 100000x100000 RGB image alone would take 30 GB)."""
    h, w = size_hw
    if h <= 0 or w <= 0:
        return "both sides must be positive"
    if h * w > MAX_SIZE_PIXELS:
        return f"{h * w} pixels per image, more than the {MAX_SIZE_PIXELS} allowed (e.g. 4096x4096)"
    return None


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


def _filter(source_hw, size_hw):
    from PIL import Image

    shrinking = size_hw[0] <= source_hw[0] and size_hw[1] <= source_hw[1]
    return Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC


def _resize_planes(planes: np.ndarray, size_hw: Size) -> np.ndarray:
    """float32 [C, H, W] -> [C, h, w], each plane in Pillow's float mode ("F")."""
    from PIL import Image

    resample = _filter(planes.shape[1:], size_hw)
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32), mode="F")
                                .resize((size_hw[1], size_hw[0]), resample), dtype=np.float32) for p in planes])


def resize_image(image, size_hw: Size):
    """Image or continuous map -> ``size_hw`` (H, W) by the resize rule (module docstring).

    numpy [H, W, C] or [H, W] (uint8 or float), or a tensor [N, C, H, W]; returns the same kind."""
    from PIL import Image

    h, w = _check_size(size_hw)
    if isinstance(image, torch.Tensor):
        assert image.ndim == 4, tuple(image.shape)
        if tuple(image.shape[-2:]) == (h, w):
            return image
        planes = image.detach().float().cpu().numpy().reshape(-1, *image.shape[-2:])  # [N*C, H, W]
        out = torch.from_numpy(_resize_planes(planes, (h, w))).reshape(*image.shape[:2], h, w)
        if image.dtype == torch.uint8:
            out = out.round().clamp(0, 255)
        return out.to(device=image.device, dtype=image.dtype)
    array = np.asarray(image)
    if array.shape[:2] == (h, w):
        return array
    if array.dtype == np.uint8 and (array.ndim == 2 or array.shape[2] == 3):  # Pillow's 8-bit path
        return np.asarray(Image.fromarray(array).resize((w, h), _filter(array.shape[:2], (h, w))), dtype=np.uint8)
    planar = (array[None] if array.ndim == 2 else np.moveaxis(array, 2, 0)).astype(np.float32)  # [C, H, W]
    out = _resize_planes(planar, (h, w))
    if array.dtype == np.uint8:
        out = np.clip(np.round(out), 0, 255)
    out = out.astype(array.dtype, copy=False)
    return out[0] if array.ndim == 2 else np.ascontiguousarray(np.moveaxis(out, 0, 2))


def mirror_image(array) -> np.ndarray:
    """numpy [H, W] or [H, W, C] (image, mask, map) -> its horizontal mirror image, a contiguous copy (what flip
    augmentation and flip test-time augmentation read)."""
    array = np.asarray(array)
    assert array.ndim in (2, 3), array.shape
    return np.ascontiguousarray(array[:, ::-1])


def resize_mask(mask, size_hw: Size):
    """Index mask -> ``size_hw`` (H, W), nearest neighbour at pixel centres (Pillow's NEAREST: never invents a
    class id). numpy [H, W] (any integer dtype) or a tensor [N, H, W]; returns the same kind and dtype."""
    from PIL import Image

    h, w = _check_size(size_hw)
    if isinstance(mask, torch.Tensor):
        assert mask.ndim == 3, tuple(mask.shape)
        if tuple(mask.shape[-2:]) == (h, w):
            return mask
        out = np.stack([resize_mask(m, (h, w)) for m in mask.detach().cpu().numpy()])
        return torch.from_numpy(out).to(device=mask.device, dtype=mask.dtype)
    array = np.asarray(mask)
    assert array.ndim == 2, array.shape
    if array.shape == (h, w):
        return array
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((w, h), Image.Resampling.NEAREST), dtype=np.uint8)
    out = Image.fromarray(array.astype(np.int32), mode="I").resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(out).astype(array.dtype)


ASPECT_NOTICE = 1.25  # fit_photo's notice: aspect ratios more than 25 % apart


def aspect_notice(source_hw, size_hw: Size) -> str | None:
    """The one-line notice when a photo of ``source_hw`` is stretched to ``size_hw`` far out of proportion (None:
    the aspect ratios are within 25 %)."""
    (ih, iw), (h, w) = _check_size(source_hw[:2]), _check_size(size_hw)
    ratio = (iw / ih) / (w / h)
    if max(ratio, 1 / ratio) <= ASPECT_NOTICE:
        return None
    return (f"a {ih}x{iw} photo is stretched to {h}x{w} (HxW): its aspect ratio (W/H {iw / ih:.2f}) differs from "
            f"{w / h:.2f} by more than {ASPECT_NOTICE - 1:.0%}; crop it first to keep its proportions")


def fit_photo(image, size_hw: Size, mask=None, notice: bool = True):
    """A real photo uint8 [H, W, 3] (+ its index mask [H, W] or None) -> (image, mask) at ``size_hw``: the whole
    photo stretched (the photo rule, module docstring), so its labels map back onto all of it. ``notice``: warn
    when the aspect ratios are far apart (off where the caller crops at random on purpose)."""
    image = np.asarray(image)
    assert mask is None or np.shape(mask)[:2] == image.shape[:2], (np.shape(mask), image.shape)  # callers check masks
    message = aspect_notice(image.shape[:2], size_hw) if notice else None
    if message:
        import warnings

        warnings.warn(message, UserWarning, stacklevel=2)
    return resize_image(image, size_hw), None if mask is None else resize_mask(mask, size_hw)

"""Make ``import torchvision`` work on a CPU-only torch whose matching torchvision is a CUDA build.

Why this exists
---------------
On the project's CPU machines ``pip install torch==2.13.0`` gives a CPU wheel, but the registry's
matching ``torchvision==0.28.0`` is a CUDA build: its compiled extension ``torchvision/_C.so`` cannot
be loaded, so the ``torchvision::*`` operators are never defined, and ``import torchvision`` (hence
timm, segmentation-models-pytorch and diffusers' UNet, which import it) dies in
``torchvision/_meta_registrations.py`` with ``RuntimeError: operator torchvision::nms does not exist``.

What it does
------------
:func:`install` (called once, from ``labelgen/__init__.py``, before anything imports torchvision)

1. returns at once if torchvision is not installed, or if its ``_C`` extension loads (GPU machines,
   matching CPU builds): then it changes nothing;
2. otherwise defines the schemas of the detection operators torchvision's Python code registers meta
   kernels for (nms, roi_align, deform_conv2d, ...), with a kernel that raises a clear error if one is
   ever *called*. labelgen never calls them: they are detection ops, and segmentation models only use
   torchvision's Python parts (transforms, model definitions).

Every entry point (``labelgen``, ``student``, the app, the tests) imports ``labelgen`` first, so this
is the one place the problem is handled.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

# Schemas of the operators torchvision's ``_meta_registrations.py`` attaches kernels to
# (taken from the argument lists there; the compiled library defines the same).
_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward": "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align": "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward": "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "roi_pool": "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward": "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "ps_roi_pool": "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward": "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, "
    "float spatial_scale, SymInt pooled_height, SymInt pooled_width, SymInt batch_size, "
    "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "qroi_align": "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
    "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "deform_conv2d": "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward": "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, "
    "Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, "
    "SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, "
    "bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
}

_library: torch.library.Library | None = None  # kept alive: dropping it would unregister the ops
patched_ops: tuple[str, ...] = ()  # names defined by install(); empty where torchvision works as is


def _extension_path() -> Path | None:
    """Location of torchvision's compiled ``_C`` library, found without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd")):
            return candidate
    return None


def _op_exists(name: str) -> bool:
    return torch._C._dispatch_has_kernel(f"torchvision::{name}") or _schema_exists(name)


def _schema_exists(name: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def install() -> tuple[str, ...]:
    """Register stand-ins for torchvision's missing operators; a no-op where they load. Idempotent."""
    global _library, patched_ops
    if patched_ops or os.environ.get("LABELGEN_NO_TORCHVISION_COMPAT") == "1":
        return patched_ops
    extension = _extension_path()
    if extension is None:  # torchvision not installed: nothing to fix
        return patched_ops
    try:
        torch.ops.load_library(str(extension))
        return patched_ops  # the real operators exist: torchvision works as is
    except OSError:
        pass
    missing = [name for name in _SCHEMAS if not _schema_exists(name)]
    if not missing:
        return patched_ops
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _library.define(_SCHEMAS[name])
        _library.impl(name, _unavailable(name), "CompositeExplicitAutograd")
    patched_ops = tuple(missing)
    return patched_ops


def _unavailable(name: str):
    def kernel(*args, **kwargs):
        raise RuntimeError(
            f"torchvision::{name} is unavailable: the installed torchvision's compiled ops do not match "
            f"this torch build (labelgen.torchvision_compat defined only its schema)."
        )

    return kernel

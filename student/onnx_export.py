"""ONNX export of a student: any image size, ``student predict``'s resizing and normalisation inside the
graph, self-describing metadata.

The graph (``student export --onnx FILE``)::

    image   uint8 [batch, height, width, 3]   RGB, as decoded from a PNG/JPEG (any height and width)
    logits  float [batch, classes, height, width]

Inside, what ``student predict`` does (labelgen/student/evaluate.py): the image is resized to the
training size (metadata ``image_size``) by the project's one resize rule (labelgen/imaging.py: area
when shrinking, bicubic when enlarging; Pillow's BOX / BICUBIC coefficients, rounded to uint8 after each
pass as Pillow's 8-bit path does), cast, normalised (the student's mean/std), run through the network at
the training size, and the logits are resized back to the input's size by the same rule (Pillow's float
path). ``argmax`` over ``classes`` gives the class ids, the same as ``student predict``'s on >= 99 % of
the pixels at any size (tests/test_onnx_export.py). The resized image is Pillow's exactly, but where both
sides shrink Pillow sometimes takes its two passes in the other order, which moves a pixel by one level.

Metadata (``metadata_props``, strings): ``classes`` (JSON list of names), ``colours`` (JSON list of
[r, g, b]), ``image_size`` (training HxW, JSON: the size the network runs at), ``resize`` (what the
graph does to the input and the logits), ``mean``/``std`` (JSON, on 0..1), ``arch``, ``encoder``,
``input_format`` ("uint8 RGB NHWC"), ``ignore_index`` (255, not an output class).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labelgen.data.io import IGNORE_INDEX, atomic_write
from labelgen.errors import LabelgenError
from labelgen.student.models import StudentConfig, size_divisor

INPUT_NAME, OUTPUT_NAME = "image", "logits"


def _max_opset() -> int:
    """The newest opset torch's TorchScript exporter (``dynamo=False``, what :func:`export_onnx` runs) writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))


MIN_OPSET, MAX_OPSET = 11, _max_opset()  # student export --opset: the range this torch can write
DYNAMIC_AXES = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}, OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}


RESIZE_NOTE = ("image resized to image_size inside (area when shrinking, bicubic when enlarging: student predict's "
               "rule), logits resized back to the input size the same way; feed the photo at its own size")
FIXED_POINT = float(1 << 22)  # Pillow's 8-bit resampling: coefficients in 22-bit fixed point (PRECISION_BITS)


def resize_matrix(source: torch.Tensor, target: torch.Tensor, bicubic: torch.Tensor) -> torch.Tensor:
    """Pillow's resampling coefficients along one axis as a matrix float64 [n_out, n_in], for the positions
    ``source`` = arange(n_in) and ``target`` = arange(n_out) (float64): BICUBIC (a = -0.5) where ``bicubic``,
    else BOX, the support widened by the scale when shrinking, each row normalised (Resample.c's
    precompute_coeffs). Tensor operations only, so the graph builds it for the size it is given."""
    scale = (source[-1:] + 1) / (target[-1:] + 1)
    filterscale = torch.where(scale < 1, torch.ones_like(scale), scale)  # no float64 Clip before opset 12
    support = torch.where(bicubic, 2.0, 0.5).to(torch.float64) * filterscale
    center = (target + 0.5) * scale  # [n_out]
    x = ((source[None, :] - center[:, None]) + 0.5) * (1.0 / filterscale)  # [n_out, n_in]
    ax = x.abs()
    zero = torch.zeros_like(x)
    cubic = torch.where(ax < 1, (1.5 * ax - 2.5) * ax * ax + 1,
                        torch.where(ax < 2, (((ax - 5) * ax + 8) * ax - 4) * -0.5, zero))
    box = ((x > -0.5) & (x <= 0.5)).to(torch.float64)
    window = (source[None, :] >= (center - support + 0.5).floor()[:, None]) & \
             (source[None, :] < (center + support + 0.5).floor()[:, None])
    k = torch.where(window, torch.where(bicubic, cubic, box), zero)
    total = k.sum(1, keepdim=True)
    return k / torch.where(total == 0, torch.ones_like(total), total)


def _resize_matrices(in_hw: tuple, out_hw: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows [h_out, h_in], columns [w_out, w_in], whether Pillow takes the vertical pass first) of the one
    resize rule from ``in_hw`` to ``out_hw`` (ints or traced sizes): area (BOX) when both sides shrink or
    stay, else bicubic on both axes (labelgen/imaging.py). Pillow (13) resamples vertically first when the
    height shrinks and the width grows, else horizontally first (measured: where both shrink it mostly does)."""
    ys, xs, yt, xt = (torch.arange(n, dtype=torch.float64) for n in (*in_hw, *out_hw))
    bicubic = ~((yt[-1] <= ys[-1]) & (xt[-1] <= xs[-1]))
    vertical_first = (yt[-1] < ys[-1]) & (xt[-1] > xs[-1])
    return resize_matrix(ys, yt, bicubic), resize_matrix(xs, xt, bicubic), vertical_first


def _fixed_point(k: torch.Tensor) -> torch.Tensor:
    """Coefficients as Pillow's 8-bit path uses them: k * 2^22 rounded half away from zero."""
    v = k * FIXED_POINT
    return torch.sign(v) * (v.abs() + 0.5).floor()


def _to_uint8(sums: torch.Tensor) -> torch.Tensor:
    """Fixed-point sums -> the uint8 values Pillow stores after a pass (rounded, clipped to 0..255)."""
    x = ((sums + FIXED_POINT / 2) / FIXED_POINT).floor()
    return torch.where(x < 0, torch.zeros_like(x), torch.where(x > 255, torch.full_like(x, 255), x))


def resize_uint8(image: torch.Tensor, size_hw: tuple) -> torch.Tensor:
    """float64 [N, C, H, W] holding uint8 values -> [N, C, h, w], as Pillow resizes a uint8 image: two passes
    (in Pillow's order), each rounded and clipped to 0..255 (fixed-point sums)."""
    rows, cols, vertical_first = _resize_matrices(image.shape[2:], size_hw)
    rows, cols = _fixed_point(rows), _fixed_point(cols).T
    horizontal_first = _to_uint8(rows @ _to_uint8(image @ cols))
    return torch.where(vertical_first, _to_uint8(_to_uint8(rows @ image) @ cols), horizontal_first)


def resize_float(maps: torch.Tensor, size_hw: tuple) -> torch.Tensor:
    """float32 [N, C, H, W] -> [N, C, h, w], as Pillow resizes a float ("F") image (no rounding between the
    passes, so their order only moves the last bits)."""
    rows, cols, _ = _resize_matrices(maps.shape[2:], size_hw)
    return rows.float() @ (maps @ cols.float().T)


class DeployedStudent(nn.Module):
    """uint8 RGB [N, H, W, 3] -> logits [N, C, H, W]: what the ONNX graph computes, ``student predict``'s
    steps (resize to the training size, normalise, network, logits back to the input's size)."""

    def __init__(self, model: nn.Module, config: StudentConfig):
        super().__init__()
        self.model = model
        self.size = tuple(int(v) for v in config.image_size)  # the network runs at the training size
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = resize_uint8(image.permute(0, 3, 1, 2).to(torch.float64), self.size)  # [N, 3, h, w], uint8 values
        logits = self.model((x.float() - self.mean) / self.std)  # [N, C, h, w]
        return resize_float(logits, image.shape[1:3])  # [N, C, H, W]


def metadata(config: StudentConfig) -> dict[str, str]:
    return {
        "classes": json.dumps([c["name"] for c in config.classes]),
        "colours": json.dumps([list(c) for c in config.class_list.colours]),
        "image_size": json.dumps(list(config.image_size)), "resize": RESIZE_NOTE,
        "mean": json.dumps(list(config.mean)), "std": json.dumps(list(config.std)),
        "arch": str(config.arch), "encoder": str(config.encoder),
        "input_format": "uint8 RGB NHWC", "ignore_index": str(IGNORE_INDEX),
    }


def export_onnx(model: nn.Module, config: StudentConfig, path: Path, opset: int = 17,
                check_sizes: tuple[tuple[int, int], ...] | None = None, tolerance: float | None = None) -> float:
    """Write the ONNX graph (atomically) and check it with onnxruntime against PyTorch at the training
    size and at other sizes (default: twice the training size, and one not a multiple of the stride).
    Returns the largest absolute difference of the logits. Checked before the file is renamed into place: a
    difference over ``tolerance``, or logits that are not finite, is refused in one line and nothing is written."""
    import onnx
    import onnxruntime as ort

    deployed = DeployedStudent(model.eval(), config).eval()
    h, w = config.image_size
    g = torch.Generator().manual_seed(0)
    dummy = torch.randint(0, 256, (2, h, w, 3), generator=g, dtype=torch.uint8)
    sizes = check_sizes or ((h, w), (2 * h, 2 * w), (h + size_divisor(model) // 2 + 3, w + 5))
    worst = 0.0

    def write(tmp: str) -> None:
        nonlocal worst
        torch.onnx.export(deployed, (dummy,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=DYNAMIC_AXES, opset_version=opset, dynamo=False)
        graph = onnx.load(tmp)
        for key, value in metadata(config).items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, tmp)
        # checked as written, before the rename: not a file another export put at ``path`` meanwhile
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        for size in sizes:
            check = torch.randint(0, 256, (2, *size, 3), generator=g, dtype=torch.uint8)
            with torch.no_grad():
                expected = deployed(check).numpy()
            got = session.run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0]
            assert got.shape == expected.shape == (2, len(config.classes), *size), (got.shape, expected.shape)
            diff = float(np.abs(got - expected).max())
            if not math.isfinite(diff):  # NaN compares false with any tolerance: it must not pass as "verified"
                raise LabelgenError(f"{path}: not written: the logits at {size[0]}x{size[1]} are not finite (NaN or "
                                    "infinite) in PyTorch or onnxruntime; the student's weights are unusable")
            worst = max(worst, diff)
        if tolerance is not None and worst > tolerance:
            raise LabelgenError(f"{path}: not written: ONNX output differs from PyTorch by {worst:.3g} "
                                f"(> --tolerance {tolerance:g})")

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), write)
    return worst

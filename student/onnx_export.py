"""ONNX export of a student: any image size, normalisation inside the graph, self-describing metadata.

The graph (``student export --onnx FILE``)::

    image   uint8 [batch, height, width, 3]   RGB, as decoded from a PNG/JPEG (any height and width)
    logits  float [batch, classes, height, width]

Inside: cast, HWC -> CHW, ImageNet normalisation (the student's mean/std), zero-padding of the
normalised input up to a multiple of the encoder's output stride where the architecture needs one
(fpn, linknet, deeplabv3plus, segformer, ...; unet takes any size as it is), so any size works; the pad
is cropped off the logits. ``argmax`` over ``classes`` gives the class ids. Unlike ``student predict``
the network runs at the image's own size (no resize to the training size): resize beforehand to
about the training size (metadata ``image_size``) for the accuracy measured at training.

Metadata (``metadata_props``, strings): ``classes`` (JSON list of names), ``colours`` (JSON list of
[r, g, b]), ``image_size`` (training HxW, JSON), ``mean``/``std`` (JSON, on 0..1), ``arch``,
``encoder``, ``input_format`` ("uint8 RGB NHWC"), ``ignore_index`` (255, not an output class).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from labelgen.data.io import IGNORE_INDEX, atomic_write
from labelgen.student.models import StudentConfig, size_divisor

INPUT_NAME, OUTPUT_NAME = "image", "logits"
DYNAMIC_AXES = {INPUT_NAME: {0: "batch", 1: "height", 2: "width"}, OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}}


class DeployedStudent(nn.Module):
    """uint8 RGB [N, H, W, 3] -> logits [N, C, H, W]: what the ONNX graph computes."""

    def __init__(self, model: nn.Module, config: StudentConfig):
        super().__init__()
        self.model = model
        self.divisor = size_divisor(model)
        self.register_buffer("mean", torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std  # [N, 3, H, W]
        h, w = x.shape[2], x.shape[3]
        pad_h = (self.divisor - h % self.divisor) % self.divisor
        pad_w = (self.divisor - w % self.divisor) % self.divisor
        logits = self.model(F.pad(x, (0, pad_w, 0, pad_h)))  # [N, C, H + pad_h, W + pad_w]
        return logits[:, :, :h, :w]


def metadata(config: StudentConfig) -> dict[str, str]:
    return {
        "classes": json.dumps([c["name"] for c in config.classes]),
        "colours": json.dumps([list(c) for c in config.class_list.colours]),
        "image_size": json.dumps(list(config.image_size)),
        "mean": json.dumps(list(config.mean)), "std": json.dumps(list(config.std)),
        "arch": str(config.arch), "encoder": str(config.encoder),
        "input_format": "uint8 RGB NHWC", "ignore_index": str(IGNORE_INDEX),
    }


def export_onnx(model: nn.Module, config: StudentConfig, path: Path, opset: int = 17,
                check_sizes: tuple[tuple[int, int], ...] | None = None) -> float:
    """Write the ONNX graph (atomically) and check it with onnxruntime against PyTorch at the training
    size and at other sizes (default: twice the training size, and one not a multiple of the stride).
    Returns the largest absolute difference of the logits."""
    import onnx
    import onnxruntime as ort

    deployed = DeployedStudent(model.eval(), config).eval()
    h, w = config.image_size
    g = torch.Generator().manual_seed(0)
    dummy = torch.randint(0, 256, (2, h, w, 3), generator=g, dtype=torch.uint8)

    def write(tmp: str) -> None:
        torch.onnx.export(deployed, (dummy,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=DYNAMIC_AXES, opset_version=opset, dynamo=False)
        graph = onnx.load(tmp)
        for key, value in metadata(config).items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, tmp)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(path), write)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sizes = check_sizes or ((h, w), (2 * h, 2 * w), (h + size_divisor(model) // 2 + 3, w + 5))
    worst = 0.0
    for size in sizes:
        check = torch.randint(0, 256, (2, *size, 3), generator=g, dtype=torch.uint8)
        with torch.no_grad():
            expected = deployed(check).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0]
        assert got.shape == expected.shape == (2, len(config.classes), *size), (got.shape, expected.shape)
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst

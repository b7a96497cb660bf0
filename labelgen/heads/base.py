"""Task heads: small networks that turn generator features into per-pixel class logits.

Common interface (every head)::

    head(features)               -> logits [N, K, C, H, W]   (K ensemble members, C classes, H x W = output_size)
    head.predict_proba(features) -> probabilities [N, K, C, H, W] (softmax over C, eval mode, no grad)
    head.save_pretrained(dir)    -> dir/head_config.json + dir/head.safetensors (labelgen.pretrained)
    TaskHead.from_pretrained(dir) -> the same head (the type its config names), without any training code

``features`` is a list of float tensors [N, C_i, h_i, w_i], one per feature level, in the order of
``in_channels``; each level may have its own (native) resolution.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from labelgen.errors import LabelgenError
from labelgen.pretrained import Pretrained
from labelgen.run import option_on

HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "head.safetensors"


class TaskHead(Pretrained):
    """Base class of heads; subclasses set ``head_type`` and implement ``forward``."""

    head_type: ClassVar[str]
    config_name, weights_name = HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME
    kind_key, kind_attribute, noun = "type", "head_type", "head"

    def __init__(self, in_channels: list[int], num_classes: int, output_size: tuple[int, int] | list[int],
                 ensemble: int):
        super().__init__()
        if not in_channels or any(int(c) <= 0 for c in in_channels):
            raise LabelgenError(f"head needs at least one feature level with channels > 0, got {in_channels}")
        if num_classes < 1:
            raise LabelgenError(f"head needs at least one class, got {num_classes}")
        self.in_channels = [int(c) for c in in_channels]
        self.num_classes = int(num_classes)
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.ensemble = int(ensemble)

    @classmethod
    def subclass_for(cls, kind: str) -> type["TaskHead"]:
        from labelgen.heads import head_class

        return head_class(kind)

    @classmethod
    def read_pretrained_config(cls, folder: Path) -> dict[str, Any]:
        return read_head_config(folder)

    def check_features(self, features: list[torch.Tensor]) -> None:
        if len(features) != len(self.in_channels):
            raise LabelgenError(f"head expects {len(self.in_channels)} feature levels, got {len(features)}")
        for level, (f, c) in enumerate(zip(features, self.in_channels)):
            if f.ndim != 4 or f.shape[1] != c:
                raise LabelgenError(f"feature level {level}: expected [N, {c}, h, w], got {list(f.shape)}")

    # bf16 autocast of predict_proba: "auto" = on CUDA (projections, upsampling and sums in bf16, not fp32),
    # True = on any device (CPU bf16 is slow on most CPUs; tests), False = fp32. Training always runs fp32.
    inference_bf16: bool | str = "auto"

    def _inference_autocast(self, device: torch.device):
        on = option_on(self.inference_bf16, device, true_anywhere=True)
        return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()

    @torch.no_grad()
    def predict_proba(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Per-member class probabilities [N, K, C, H, W] float32 (eval mode)."""
        was_training = self.training
        self.eval()
        try:
            with self._inference_autocast(features[0].device):
                logits = self(features)
            return torch.softmax(logits.float(), dim=2)
        finally:
            self.train(was_training)


def head_id(folder: Path | str) -> str:
    """Short content id of a saved head (sha256 of its weights + config, 12 hex digits)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for name in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:12]


def read_head_config(folder: Path | str) -> dict[str, Any]:
    path = Path(folder) / HEAD_CONFIG_NAME
    if not path.is_file():
        raise LabelgenError(f"{folder}: no trained head ({HEAD_CONFIG_NAME} missing; run `labelgen train-heads`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LabelgenError(f"{path}: invalid JSON ({e.msg})") from None

"""Task heads (feature maps -> per-pixel class logits) behind one interface (see heads/base.py).

    create_head("pixel-mlp", in_channels=[512, 256], num_classes=8, output_size=(64, 64), ensemble=3)
    create_head("conv", in_channels=[...], num_classes=8, output_size=(64, 64))
    TaskHead.from_pretrained("W/heads")  rebuild a saved head from head_config.json + head.safetensors

Every head maps a list of feature levels [N, C_i, h_i, w_i] to logits [N, K, C, H, W].
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from labelgen.errors import LabelgenError
from labelgen.heads.base import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME, TaskHead, head_id, read_head_config
from labelgen.heads.conv import ConvInterpreter
from labelgen.heads.pixel_mlp import PixelMLPEnsemble

HEADS: dict[str, type[TaskHead]] = {"pixel-mlp": PixelMLPEnsemble, "conv": ConvInterpreter}

__all__ = ["HEADS", "TaskHead", "create_head", "default_ensemble", "head_id", "read_head_config",
           "HEAD_CONFIG_NAME", "HEAD_WEIGHTS_NAME"]


def head_class(name: str) -> type[TaskHead]:
    if name not in HEADS:
        raise LabelgenError(f"unknown head type {name!r} (one of {', '.join(HEADS)})")
    return HEADS[name]


def default_ensemble(name: str) -> int:
    """Ensemble members K a head type has unless told otherwise (its constructor's ``ensemble`` default)."""
    return int(inspect.signature(head_class(name)).parameters["ensemble"].default)


def create_head(name: str, in_channels: list[int], num_classes: int, output_size=(64, 64), seed: int | None = None,
                **options: Any) -> TaskHead:
    """A new head of type ``name`` (options: ensemble, hidden, ... — see each head's constructor). ``seed``: its
    initial weights drawn from that seed (the global torch RNG is left as it was); None: from the global RNG."""
    cls = head_class(name)
    if seed is None:
        return cls(in_channels=list(in_channels), num_classes=num_classes, output_size=output_size, **options)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(in_channels=list(in_channels), num_classes=num_classes, output_size=output_size, **options)

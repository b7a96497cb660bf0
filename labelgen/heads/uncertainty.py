"""Per-pixel and per-image uncertainty of a head ensemble's prediction.

Pixel: with K > 1 members, the ensemble Jensen-Shannon divergence
    JS = H(mean_k p_k) - mean_k H(p_k)          (nats; 0 when all members agree)
and with K = 1 (a single conv interpreter) the entropy H(p) of the prediction.
Image score: mean of its top X = 10 % most uncertain pixels (``TOP_FRACTION``), so a sample with
a small badly-labelled region still scores high (a plain mean would drown it in easy background).
"""
from __future__ import annotations

import math

import torch

TOP_FRACTION = 0.10


def entropy(probs: torch.Tensor, dim: int) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=dim)


def pixel_uncertainty(probs: torch.Tensor) -> torch.Tensor:
    """probs [N, K, C, H, W] -> uncertainty [N, H, W] (JS divergence for K > 1, entropy for K = 1)."""
    assert probs.ndim == 5, probs.shape
    mean_entropy = entropy(probs.mean(dim=1), dim=1)  # [N, H, W]
    if probs.shape[1] == 1:
        return mean_entropy
    return (mean_entropy - entropy(probs, dim=2).mean(dim=1)).clamp_min(0)


def uncertainty_measure(ensemble: int) -> str:
    return "js-divergence" if ensemble > 1 else "entropy"


def image_scores(uncertainty: torch.Tensor, top_fraction: float = TOP_FRACTION) -> torch.Tensor:
    """[N, H, W] -> [N]: mean of each image's top ``top_fraction`` most uncertain pixels."""
    flat = uncertainty.flatten(1)  # [N, H*W]
    count = max(1, math.ceil(top_fraction * flat.shape[1]))
    return flat.topk(count, dim=1).values.mean(dim=1)

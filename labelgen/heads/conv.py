"""DreamTeacher / BigDatasetGAN-style convolutional interpreter.

    per level i: 1x1 conv C_i -> hidden, GroupNorm, SiLU           (native resolution, cheap)
    bilinear upsample every level to the output resolution, concat -> [N, L*hidden, H, W]
    1x1 conv fuse -> hidden (computed per level before upsampling: same result, L x less memory), then ``blocks`` x (depthwise 3x3 conv, pointwise 1x1 conv, GroupNorm,
    SiLU, Dropout2d(0.1)) -> 1x1 conv -> C logits

Trained with cross-entropy + 3 * soft Dice. ``ensemble`` K independent interpreters (default 1):
with K = 1 the synthesis uncertainty is the per-pixel entropy of the prediction (the ensemble
Jensen-Shannon divergence is zero for one member); K > 1 gives the ensemble JS divergence as for
the pixel MLP.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelgen.heads.base import TaskHead


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class _Interpreter(nn.Module):
    def __init__(self, in_channels: list[int], num_classes: int, hidden: int, blocks: int, dropout: float):
        super().__init__()
        self.project = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden, 1), nn.GroupNorm(_groups(hidden), hidden), nn.SiLU())
            for c in in_channels)
        self.fuse = nn.Conv2d(hidden * len(in_channels), hidden, 1)
        self.blocks = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),  # depthwise
                          nn.Conv2d(hidden, hidden, 1),  # pointwise
                          nn.GroupNorm(_groups(hidden), hidden), nn.SiLU(), nn.Dropout2d(dropout))
            for _ in range(blocks)])
        self.classify = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, features: list[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        # fuse(concat_i up(a_i)) computed as sum_i up(fuse_i(a_i)) + bias: exact (1x1 conv and bilinear
        # upsampling are both linear, upsampling weights sum to 1) and never holds L upsampled maps.
        hidden = self.fuse.out_channels
        x = None
        for i, (proj, level) in enumerate(zip(self.project, features)):
            weight_i = self.fuse.weight[:, i * hidden:(i + 1) * hidden]  # [hidden, hidden, 1, 1]
            fused = F.conv2d(proj(level.float()), weight_i)  # [N, hidden, h_i, w_i]
            up = F.interpolate(fused, size=output_size, mode="bilinear", align_corners=False)  # [N, hidden, H, W]
            x = up if x is None else x + up
        x = x + self.fuse.bias.to(x.dtype).view(1, -1, 1, 1)  # in x's dtype (bf16 under autocast)
        return self.classify(self.blocks(x))  # [N, C, H, W]


class ConvInterpreter(TaskHead):
    head_type = "conv"

    def __init__(self, in_channels: list[int], num_classes: int, output_size, ensemble: int = 1,
                 hidden: int = 64, blocks: int = 2, dropout: float = 0.1, **_: Any):
        super().__init__(in_channels, num_classes, output_size, ensemble)
        self.members = nn.ModuleList(_Interpreter(self.in_channels, self.num_classes, int(hidden), int(blocks),
                                                  float(dropout)) for _ in range(self.ensemble))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        self.check_features(features)
        return torch.stack([m(features, self.output_size) for m in self.members], dim=1)  # [N, K, C, H, W]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, eps: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss, 1 - mean_c dice_c, over labelled pixels. logits [N, C, H, W], target [N, H, W]."""
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()  # [N, 1, H, W]
    probs = torch.softmax(logits, dim=1) * valid
    onehot = F.one_hot(target.clamp(max=num_classes - 1).long(), num_classes).permute(0, 3, 1, 2).float() * valid
    intersection = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1 - ((2 * intersection + eps) / (total + eps)).mean()

"""DatasetGAN's pixel classifier: an ensemble of K per-pixel MLPs over concatenated features.

Each member: D -> 256 -> 128 -> C with ReLU + BatchNorm1d (D = sum of feature channels, every level
bilinearly upsampled to the output resolution). DatasetGAN used K = 10; the default here is 3.
Inference reads features band by band (``max_chunk_floats``), so a full-resolution [N, D, H, W]
tensor is never built.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from labelgen.heads.base import TaskHead
from labelgen.heads.sampling import features_at_pixels, features_of_rows


def _member(in_dim: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.BatchNorm1d(width)]
        in_dim = width
    layers.append(nn.Linear(in_dim, num_classes))
    return nn.Sequential(*layers)


class PixelMLPEnsemble(TaskHead):
    head_type = "pixel-mlp"

    def __init__(self, in_channels: list[int], num_classes: int, output_size, ensemble: int = 3,
                 hidden: list[int] | tuple[int, ...] = (256, 128), max_chunk_floats: int = 2 ** 24, **_: Any):
        super().__init__(in_channels, num_classes, output_size, ensemble, hidden=list(hidden),
                         max_chunk_floats=int(max_chunk_floats))
        self.in_dim = sum(self.in_channels)
        self.max_chunk_floats = int(max_chunk_floats)
        self.members = nn.ModuleList(_member(self.in_dim, list(hidden), self.num_classes) for _ in range(self.ensemble))

    def forward_pixels(self, pixel_features: torch.Tensor) -> torch.Tensor:
        """[P, D] -> logits [P, K, C] (every member sees every pixel)."""
        assert pixel_features.ndim == 2 and pixel_features.shape[1] == self.in_dim, pixel_features.shape
        return torch.stack([member(pixel_features) for member in self.members], dim=1)

    def forward_members(self, member_pixel_features: torch.Tensor) -> torch.Tensor:
        """Training: [K, P, D] (member k gets its own pixels) -> logits [K, P, C]."""
        assert member_pixel_features.shape[0] == self.ensemble, member_pixel_features.shape
        return torch.stack([member(x) for member, x in zip(self.members, member_pixel_features)], dim=0)

    def features_at(self, features: list[torch.Tensor], ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Per-pixel input vectors at (ys, xs) [N, P] -> [N, P, D]."""
        return features_at_pixels(features, ys, xs, self.output_size)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        self.check_features(features)
        n = features[0].shape[0]
        height, width = self.output_size
        rows_per_chunk = max(1, self.max_chunk_floats // max(1, n * width * self.in_dim))
        bands = []
        for row_start in range(0, height, rows_per_chunk):
            row_stop = min(height, row_start + rows_per_chunk)
            band = features_of_rows(features, row_start, row_stop, self.output_size)  # [N, D, rows, W]
            pixels = band.permute(0, 2, 3, 1).reshape(-1, self.in_dim)  # [N*rows*W, D]
            logits = self.forward_pixels(pixels)  # [N*rows*W, K, C]
            bands.append(logits.view(n, row_stop - row_start, width, self.ensemble, self.num_classes))
        logits = torch.cat(bands, dim=1)  # [N, H, W, K, C]
        return logits.permute(0, 3, 4, 1, 2).contiguous()  # [N, K, C, H, W]

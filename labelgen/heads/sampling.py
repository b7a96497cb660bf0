"""Bilinear feature lookup at chosen output pixels, without upsampling whole feature maps.

``F.interpolate(level, size=(H, W), mode="bilinear", align_corners=False)[..., y, x]`` equals
``grid_sample`` at the centre of output pixel (y, x) mapped into the level ((x + 0.5) / W * 2 - 1,
border padding). So a head can read features at P pixels for P * sum(C_i) floats instead of
H * W * sum(C_i) — the reason pixel-MLP training memory does not grow with image size or count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(ys: torch.Tensor, xs: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Normalised grid_sample coordinates of output pixel centres; ys, xs [N, ...] -> [N, ..., 2] (x, y)."""
    height, width = output_size
    gx = (xs.float() + 0.5) / width * 2 - 1
    gy = (ys.float() + 0.5) / height * 2 - 1
    return torch.stack([gx, gy], dim=-1)


def features_at_pixels(features: list[torch.Tensor], ys: torch.Tensor, xs: torch.Tensor,
                       output_size: tuple[int, int]) -> torch.Tensor:
    """Concatenated bilinear features at pixels (ys[n, p], xs[n, p]) -> [N, P, sum(C_i)]."""
    assert ys.shape == xs.shape and ys.ndim == 2, (ys.shape, xs.shape)
    grid = pixel_grid(ys, xs, output_size).to(features[0].device)[:, None]  # [N, 1, P, 2]
    sampled = [F.grid_sample(level.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
               for level in features]  # each [N, C_i, 1, P]
    return torch.cat(sampled, dim=1)[:, :, 0].transpose(1, 2)  # [N, P, D]


def features_of_rows(features: list[torch.Tensor], row_start: int, row_stop: int,
                     output_size: tuple[int, int]) -> torch.Tensor:
    """Concatenated bilinear features of output rows [row_start, row_stop) -> [N, D, rows, W]."""
    height, width = output_size
    n = features[0].shape[0]
    ys = torch.arange(row_start, row_stop).view(-1, 1).expand(-1, width)
    xs = torch.arange(width).view(1, -1).expand(row_stop - row_start, -1)
    grid = pixel_grid(ys, xs, output_size).to(features[0].device)[None].expand(n, -1, -1, -1)  # [N, rows, W, 2]
    return torch.cat([F.grid_sample(level.float(), grid, mode="bilinear", padding_mode="border",
                                    align_corners=False) for level in features], dim=1)

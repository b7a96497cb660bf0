"""DatasetGAN's pixel classifier: an ensemble of K per-pixel MLPs over concatenated features.

Each member: D -> 256 -> 128 -> C with ReLU + BatchNorm1d (D = sum of feature channels, every level
bilinearly upsampled to the output resolution). DatasetGAN used K = 10; the default here is 3.
Inference projects each level with the members' first layer at native resolution and upsamples the
projections band by band (``max_chunk_floats``), so a full-resolution [N, D, H, W] tensor is never
built (see ``forward``); in eval mode the K members' later layers run as one batched matmul per layer with
each BatchNorm folded into the Linear after it. ``predict_proba`` on CUDA runs it under bf16 autocast
(projections, upsampling and sums in bf16; TaskHead.inference_bf16).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
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
                 hidden: list[int] | tuple[int, ...] = (256, 128), max_chunk_floats: int = 2 ** 25, **_: Any):
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
        """Full-resolution logits [N, K, C, H, W], band by band.

        The first Linear of every member is applied per level at native resolution, then upsampled:
        exact, because bilinear upsampling is linear with weights summing to 1, so
        W @ concat_i(up(f_i)) + b = sum_i up(W_i @ f_i) + b. Per output pixel this costs
        L * K * hidden adds instead of D * K * hidden multiply-adds (D = sum C_i, e.g. 960 -> 4 levels)."""
        self.check_features(features)
        n = features[0].shape[0]
        height, width = self.output_size
        first_layers = [member[0] for member in self.members]
        weight = torch.cat([layer.weight for layer in first_layers])  # [K*H1, D]
        bias = torch.cat([layer.bias for layer in first_layers])  # [K*H1]
        hidden = weight.shape[0] // self.ensemble
        projected, offset = [], 0
        for level, channels in zip(features, self.in_channels):
            projected.append(F.conv2d(level.float(), weight[:, offset:offset + channels, None, None])
                             .contiguous(memory_format=torch.channels_last))  # [N, K*H1, h_i, w_i], NHWC in memory
            offset += channels
        logits = projected[0].new_empty(n, self.ensemble, self.num_classes, height, width,
                                        dtype=torch.float32)  # [N, K, C, H, W]
        floats_per_image = height * width * weight.shape[0]
        if floats_per_image <= self.max_chunk_floats:  # whole images at a time: F.interpolate (fast on CPU)
            step = max(1, self.max_chunk_floats // floats_per_image)
            for start in range(0, n, step):
                summed = None
                for level in projected:
                    up = level[start:start + step]
                    if tuple(up.shape[-2:]) != self.output_size:
                        up = F.interpolate(up, size=self.output_size, mode="bilinear",
                                           align_corners=False)  # [n', K*H1, H, W]
                    elif summed is None:
                        up = up.clone()  # summed is added to in place: not the projection itself
                    summed = up if summed is None else summed.add_(up)
                logits[start:start + step] = self._classify(summed, bias, hidden)
        else:  # very large outputs: bands of rows, bilinear lookup with grid_sample (same values)
            rows_per_chunk = max(1, self.max_chunk_floats // max(1, n * width * weight.shape[0]))
            for row_start in range(0, height, rows_per_chunk):
                row_stop = min(height, row_start + rows_per_chunk)
                summed = sum(features_of_rows([level], row_start, row_stop, self.output_size)
                             for level in projected)  # [N, K*H1, rows, W]
                logits[:, :, :, row_start:row_stop] = self._classify(summed, bias, hidden)
        return logits

    def _classify(self, summed: torch.Tensor, bias: torch.Tensor, hidden: int) -> torch.Tensor:
        """Upsampled first-layer outputs [N, K*H1, h, w] (+ bias [K*H1]) -> logits [N, K, C, h, w]."""
        n, _, h, w = summed.shape
        pixels = (summed.permute(0, 2, 3, 1) + bias.to(summed.dtype)).reshape(-1, self.ensemble, hidden)  # [P, K, H1]
        if self.training:  # BatchNorm on batch statistics: member by member
            out = torch.stack([member[1:](pixels[:, k]) for k, member in enumerate(self.members)], dim=1)  # [P, K, C]
        else:  # eval: all members in one batched matmul per layer, BatchNorm folded into the next Linear
            x = torch.relu(pixels).transpose(0, 1)  # [K, P, H1]
            layers = self._folded_layers()
            for i, (weight, layer_bias) in enumerate(layers):
                x = torch.baddbmm(layer_bias.to(x.dtype), x, weight.to(x.dtype))  # [K, P, out]
                if i < len(layers) - 1:
                    x = torch.relu(x)
            out = x.transpose(0, 1)  # [P, K, C]
        return out.reshape(n, h, w, self.ensemble, self.num_classes).permute(0, 3, 4, 1, 2)

    def _folded_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Eval: each member's Linear layers after the first, stacked over members as (weight [K, in, out],
        bias [K, 1, out]), the BatchNorm before each folded in: BN(r) = a * r + c with a = gamma / sqrt(var + eps),
        c = beta - mean * a, so Linear(BN(r)) = (W diag(a)) r + (W c + b). A member is [Linear, ReLU, BN] *
        len(hidden) + [Linear]."""
        stacked = []
        for index in range(3, len(self.members[0]), 3):
            weights, biases = [], []
            for member in self.members:
                norm, linear = member[index - 1], member[index]
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # a [in]
                shift = norm.bias - norm.running_mean * scale  # c [in]
                weights.append((linear.weight * scale).t())  # [in, out]
                biases.append((linear.bias + linear.weight @ shift)[None])  # [1, out]
            stacked.append((torch.stack(weights), torch.stack(biases)))
        return stacked

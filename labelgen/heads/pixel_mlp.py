"""DatasetGAN's pixel classifier: an ensemble of K per-pixel MLPs over concatenated features.

Each member: D -> 256 -> 128 -> C with ReLU + BatchNorm1d (D = sum of feature channels, every level
bilinearly upsampled to the output resolution). DatasetGAN used K = 10; the default here is 3.
Inference projects the levels with the members' first layer at native resolution (the levels of one size as
one concatenation) and upsamples the projections band by band (``max_chunk_floats``), so a full-resolution
[N, D, H, W] tensor is never built (see ``forward``; on the CPU a few members and images at a time,
``member_chunk_floats``); in eval mode the members' later layers run as one batched matmul per layer with each
BatchNorm folded into the Linear after it. ``predict_proba`` on CUDA runs it under bf16 autocast (projections,
upsampling and sums in bf16; TaskHead.inference_bf16).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelgen.heads.base import TaskHead
from labelgen.heads.sampling import features_at_pixels, features_of_rows


# CPU inference: the members' full-resolution first-layer outputs are computed a few members (and images) at a time,
# at most this many floats (8 MiB: within a server CPU's L3 cache; one 256-wide member at 96x64 is 1.6 M). On the
# 2-core CPU machine at 96x64 (CCP's t = 25, 50, 100 levels): K = 3 90 ms an image, 145 all at once; K = 10 305 vs
# 701 (bench/bench_head_inference.py, docs/benchmarks.md)
MEMBER_CHUNK_FLOATS = 2 ** 21


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
                 hidden: list[int] | tuple[int, ...] = (256, 128), max_chunk_floats: int = 2 ** 25,
                 member_chunk_floats: int = MEMBER_CHUNK_FLOATS, **_: Any):
        super().__init__(in_channels, num_classes, output_size, ensemble)
        self.in_dim = sum(self.in_channels)
        self.max_chunk_floats = int(max_chunk_floats)
        self.member_chunk_floats = int(member_chunk_floats)
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
        """Full-resolution logits [N, K, C, H, W], member group by member group, band by band.

        The first Linear of every member is applied per level at native resolution, then upsampled:
        exact, because bilinear upsampling is linear with weights summing to 1, so
        W @ concat_i(up(f_i)) + b = sum_i up(W_i @ f_i) + b. Per output pixel this costs
        S * K * hidden adds instead of D * K * hidden multiply-adds (D = sum C_i, e.g. 960 -> 4 levels; S = the
        levels' distinct sizes: the levels of one size, e.g. one UNet block at several timesteps, are summed
        before their one upsampling). On the CPU the members (and images) run in groups whose full-resolution
        first-layer output fits ``member_chunk_floats`` (cache-sized; one member and image at least); elsewhere
        all members at once and as many images as ``max_chunk_floats`` allows."""
        self.check_features(features)
        n = features[0].shape[0]
        height, width = self.output_size
        logits = features[0].new_empty(n, self.ensemble, self.num_classes, height, width,
                                       dtype=torch.float32)  # [N, K, C, H, W]
        group, images = self.ensemble, n  # members and images per pass
        if features[0].device.type == "cpu":
            floats_per_member = height * width * self.members[0][0].out_features  # one image's, full resolution
            group = max(1, min(self.ensemble, self.member_chunk_floats // floats_per_member))
            if not self.training:  # (training: BatchNorm's statistics are over the whole batch)
                images = max(1, self.member_chunk_floats // (floats_per_member * group))
        levels_of_size: dict[tuple[int, int], list[torch.Tensor]] = {}  # levels of one size, concatenated: one
        columns_of_size: dict[tuple[int, int], list[int]] = {}  # projection each, summed before its upsampling
        offset = 0
        for level, channels in zip(features, self.in_channels):
            size = tuple(level.shape[-2:])
            levels_of_size.setdefault(size, []).append(level.float())
            columns_of_size.setdefault(size, []).extend(range(offset, offset + channels))
            offset += channels
        device = features[0].device
        sized = [(torch.cat(levels_of_size[size], dim=1), torch.tensor(columns_of_size[size], device=device))
                 for size in levels_of_size]  # ([N, C_s, h_s, w_s], the first layer's input columns [C_s])
        first_layers = [member[0] for member in self.members]
        weight = torch.cat([layer.weight for layer in first_layers])  # [K*H1, D]
        bias = torch.cat([layer.bias for layer in first_layers])  # [K*H1]
        hidden = first_layers[0].out_features
        # once per call, sliced per member group: the first layer's weight for each size, the folded later layers
        size_weights = [weight[:, columns, None, None] for _, columns in sized]  # [K*H1, C_s, 1, 1] a size
        folded = None if self.training else self._folded_layers()
        for first in range(0, self.ensemble, group):
            members = range(first, min(self.ensemble, first + group))
            rows = slice(first * hidden, members.stop * hidden)
            projections = [w[rows] for w in size_weights]  # [k*H1, C_s, 1, 1] a size
            layers = None if folded is None else [(w[first:members.stop], b[first:members.stop]) for w, b in folded]
            for start in range(0, n, images):
                chunk = [x[start:start + images] for x, _ in sized]
                logits[start:start + images, first:members.stop] = self._forward_members(
                    chunk, members, projections, bias[rows], layers)
        return logits

    def _forward_members(self, sized: list[torch.Tensor], members: range, projections: list[torch.Tensor],
                         bias: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """forward() of the members ``members`` only, on forward's levels grouped by size ([N, C_s, h_s, w_s] each),
        with their first layer's weight for each size ([k*H1, C_s, 1, 1]) and bias [k*H1] and their folded later
        layers (eval; None in training): logits [N, k, C, H, W]."""
        n = sized[0].shape[0]
        height, width = self.output_size
        projected = [F.conv2d(x, projection)  # [N, k*H1, h_s, w_s]
                     .contiguous(memory_format=torch.channels_last)
                     for x, projection in zip(sized, projections)]  # NHWC in memory
        logits = projected[0].new_empty(n, len(members), self.num_classes, height, width,
                                        dtype=torch.float32)  # [N, k, C, H, W]
        floats_per_image = height * width * bias.shape[0]
        if floats_per_image <= self.max_chunk_floats:  # whole images at a time: F.interpolate (fast on CPU)
            step = max(1, self.max_chunk_floats // floats_per_image)
            for start in range(0, n, step):
                summed = None
                for level in projected:
                    up = level[start:start + step]
                    if tuple(up.shape[-2:]) != self.output_size:
                        up = F.interpolate(up, size=self.output_size, mode="bilinear",
                                           align_corners=False)  # [n', k*H1, H, W]
                    elif summed is None:
                        up = up.clone()  # summed is added to in place: not the projection itself
                    summed = up if summed is None else summed.add_(up)
                logits[start:start + step] = self._classify(summed, bias, members, layers)
        else:  # very large outputs: bands of rows, bilinear lookup with grid_sample (same values)
            rows_per_chunk = max(1, self.max_chunk_floats // max(1, n * width * bias.shape[0]))
            for row_start in range(0, height, rows_per_chunk):
                row_stop = min(height, row_start + rows_per_chunk)
                summed = sum(features_of_rows([level], row_start, row_stop, self.output_size)
                             for level in projected)  # [N, k*H1, rows, W]
                logits[:, :, :, row_start:row_stop] = self._classify(summed, bias, members, layers)
        return logits

    def _classify(self, summed: torch.Tensor, bias: torch.Tensor, members: range,
                  layers: list[tuple[torch.Tensor, torch.Tensor]] | None) -> torch.Tensor:
        """Upsampled first-layer outputs of ``members`` [N, k*H1, h, w] (+ bias [k*H1]) -> logits [N, k, C, h, w]
        (``layers``: their folded later layers in eval, None in training)."""
        n, _, h, w = summed.shape
        k = len(members)
        pixels = (summed.permute(0, 2, 3, 1) + bias.to(summed.dtype)).reshape(n * h * w, k, -1)  # [P, k, H1]
        if layers is None:  # training: BatchNorm on batch statistics, member by member
            out = torch.stack([self.members[m][1:](pixels[:, i]) for i, m in enumerate(members)], dim=1)  # [P, k, C]
        else:  # eval: the members in one batched matmul per layer, BatchNorm folded into the next Linear
            x = torch.relu(pixels).transpose(0, 1)  # [k, P, H1]
            for i, (weight, layer_bias) in enumerate(layers):
                x = torch.baddbmm(layer_bias.to(x.dtype), x, weight.to(x.dtype))  # [k, P, out]
                if i < len(layers) - 1:
                    x = torch.relu(x)
            out = x.transpose(0, 1)  # [P, k, C]
        return out.reshape(n, h, w, k, self.num_classes).permute(0, 3, 4, 1, 2)

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

"""Distillation losses and the DreamTeacher feature regressor.

Label distillation (``label-distill``): the teacher's soft labels p (per pixel, over C classes) are
sharpened/softened at temperature tau: q = softmax(log p / tau) (for stored logits z this is
softmax(z / tau), the same thing). The loss is Hinton's: tau^2 * KL(q || softmax(z_s / tau)),
averaged over valid pixels. The tau^2 factor keeps the gradient magnitude of the soft term
independent of tau (the gradient of the softened KL scales as 1/tau^2). KL equals the cross-entropy
-sum q log s minus the teacher's entropy (a constant), so for one-hot q and tau = 1 it *is* plain CE.

Feature distillation (``feature-distill``, DreamTeacher): an FPN with a pyramid pooling module
(PPM, scales 1, 2, 3, 6; 256 channels, BN + ReLU) over the student encoder's multi-scale features
(strides 4..32), then a 1x1 conv per generator feature level regressing that level's channels.

Level matching: generator level i (size h_i x w_i) is paired with the FPN level (stride 4, 8, 16,
32 of the student input) whose size is nearest in log2 scale (ties -> the finer level); the
generator feature is then resized (bilinear, antialiased when shrinking) to that level's size.
Several generator levels may share one FPN level; each has its own 1x1 conv.

Loss per level: MSE(regressed, LN(target)) where LN is a parameter-free LayerNorm over channels,
plus ``at_weight`` (10) x attention transfer: a = normalize(flatten(mean_c f^2)), loss
= ||a_s - a_t||_2 averaged over the batch. The level losses are averaged.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelgen.data.io import IGNORE_INDEX
from labelgen.errors import LabelgenError

PPM_SCALES = (1, 2, 3, 6)
FPN_CHANNELS = 256
MIN_STRIDE_LEVEL = 2  # smp encoder features: index 0 = input, 1 = stride 2, 2 = stride 4, ... 5 = stride 32


# ---------------------------------------------------------------- label distillation
def teacher_targets(probs: torch.Tensor, tau: float, eps: float = 1e-6) -> torch.Tensor:
    """Teacher probabilities p [N, C, H, W] -> soft targets at tau: softmax(log p / tau)."""
    return torch.softmax(torch.log(probs.clamp_min(eps)) / tau, dim=1)


def soft_label_loss(logits: torch.Tensor, probs: torch.Tensor, tau: float = 4.0, valid: torch.Tensor | None = None,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """tau^2 * KL(q_tau || softmax(logits / tau)), mean over valid pixels.

    logits, probs: [N, C, H, W]; valid: bool [N, H, W] (False = ignored); weights: [N] per sample or
    [N, H, W] per pixel (see ``loss_weights``)."""
    assert logits.shape == probs.shape, (logits.shape, probs.shape)
    q = teacher_targets(probs.float(), tau) if tau != 1.0 else probs.float()
    log_s = F.log_softmax(logits.float() / tau, dim=1)
    kl = (torch.xlogy(q, q) - q * log_s).sum(1)  # [N, H, W]
    if valid is None:
        valid = torch.ones_like(kl, dtype=torch.bool)
    w = valid.float()
    if weights is not None:
        w = w * _per_pixel(weights, w)
    return (tau ** 2) * (kl * w).sum() / w.sum().clamp_min(1.0)


def hard_label_loss(logits: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy with ignore index 255; logits [N, C, H, W], mask long [N, H, W]; weights [N] or [N, H, W]."""
    if weights is None:
        return F.cross_entropy(logits.float(), mask, ignore_index=IGNORE_INDEX)
    per_pixel = F.cross_entropy(logits.float(), mask, ignore_index=IGNORE_INDEX, reduction="none")  # [N, H, W]
    w = (mask != IGNORE_INDEX).float()
    w = w * _per_pixel(weights, w)
    return (per_pixel * w).sum() / w.sum().clamp_min(1.0)


def _per_pixel(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample [N] or per-pixel [N, H, W] weights -> broadcastable to ``like`` [N, H, W]."""
    weights = weights.float()
    if weights.dim() == 1:
        return weights[:, None, None]
    assert weights.shape == like.shape, (weights.shape, like.shape)
    return weights


def loss_weights(mask: torch.Tensor, class_weights: torch.Tensor | None, sample_weights: torch.Tensor | None
                 ) -> torch.Tensor | None:
    """Per-pixel weights [N, H, W] = class weight of each pixel's label (mask [N, H, W], 255 = ignored)
    x the sample's weight [N]; None when neither is used."""
    if class_weights is None:
        return sample_weights
    ids = mask.clamp(max=len(class_weights) - 1)  # ignored pixels get any weight: their loss is masked out
    w = class_weights.to(mask.device)[ids]  # [N, H, W]
    return w if sample_weights is None else w * sample_weights.float()[:, None, None]


# ---------------------------------------------------------------- feature distillation
def channel_layer_norm(f: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over the channel dim of [N, C, H, W]."""
    return F.layer_norm(f.permute(0, 2, 3, 1), (f.shape[1],)).permute(0, 3, 1, 2)


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """Spatial attention (p = 2): mean over channels of |f|^2, flattened and L2-normalised -> [N, H*W]."""
    return F.normalize(f.float().pow(2).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return (attention_map(student) - attention_map(teacher)).norm(p=2, dim=1).mean()


def feature_distill_loss(regressed: list[torch.Tensor], targets: list[torch.Tensor], at_weight: float = 10.0
                         ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over levels of MSE(r, LN(t)) + at_weight * AT(r, LN(t)); targets already resized to r's size."""
    mse_total, at_total = 0.0, 0.0
    for r, t in zip(regressed, targets, strict=True):
        assert r.shape == t.shape, (r.shape, t.shape)
        t = channel_layer_norm(t.float())
        mse_total = mse_total + F.mse_loss(r.float(), t)
        at_total = at_total + attention_transfer_loss(r, t)
    n = len(regressed)
    loss = (mse_total + at_weight * at_total) / n
    return loss, {"feat_mse": float(mse_total.detach()) / n, "feat_at": float(at_total.detach()) / n}


def match_levels(student_sizes: list[tuple[int, int]], teacher_sizes: list[tuple[int, int]]) -> list[int]:
    """For each teacher level, the index of the student level nearest in log2 size (ties -> finer)."""
    matched = []
    for th, tw in teacher_sizes:
        dist = [abs(math.log2(sh * sw) - math.log2(th * tw)) for sh, sw in student_sizes]
        matched.append(min(range(len(dist)), key=lambda i: (round(dist[i], 6), i)))
    return matched


def resize_to(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(f.shape[-2:]) == tuple(size):
        return f
    shrink = f.shape[-2] > size[0] or f.shape[-1] > size[1]
    return F.interpolate(f.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PyramidPooling(nn.Module):
    """PPM: pool to 1x1, 2x2, 3x3, 6x6, 1x1 conv + BN + ReLU each, upsample, concat with input, 3x3 fuse."""

    def __init__(self, cin: int, cout: int = FPN_CHANNELS, scales=PPM_SCALES):
        super().__init__()
        self.scales = tuple(scales)
        self.stages = nn.ModuleList(_conv_bn_relu(cin, cout, 1) for _ in self.scales)
        self.fuse = _conv_bn_relu(cin + cout * len(self.scales), cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = [F.interpolate(stage(F.adaptive_avg_pool2d(x, s)), size=(h, w), mode="bilinear", align_corners=False)
                  for s, stage in zip(self.scales, self.stages)]
        return self.fuse(torch.cat([x, *pooled], 1))


class FeatureRegressor(nn.Module):
    """FPN + PPM over student encoder features; one 1x1 conv per generator level.

    forward(encoder_features) -> list of [N, C_i, h, w] (generator level i's channels at the size of
    its matched FPN level). ``levels[i]`` is that FPN level (0 = stride 4 ... 3 = stride 32)."""

    def __init__(self, encoder_channels: list[int], teacher_channels: list[int], levels: list[int],
                 width: int = FPN_CHANNELS):
        super().__init__()
        self.in_channels = list(encoder_channels[MIN_STRIDE_LEVEL:])  # strides 4, 8, 16, 32
        n = len(self.in_channels)
        if any(not 0 <= lv < n for lv in levels) or len(levels) != len(teacher_channels):
            raise LabelgenError(f"bad level matching {levels} for {n} student levels / {len(teacher_channels)} teacher levels")
        self.levels = list(levels)
        self.teacher_channels = list(teacher_channels)
        self.ppm = PyramidPooling(self.in_channels[-1], width)
        self.lateral = nn.ModuleList(_conv_bn_relu(c, width, 1) for c in self.in_channels[:-1])
        self.smooth = nn.ModuleList(_conv_bn_relu(width, width, 3) for _ in range(n))
        self.heads = nn.ModuleList(nn.Conv2d(width, c, 1) for c in teacher_channels)

    def pyramid(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Top-down FPN outputs [N, 256, H/s, W/s] for s = 4, 8, 16, 32."""
        feats = features[MIN_STRIDE_LEVEL:]
        assert [f.shape[1] for f in feats] == self.in_channels, ([f.shape[1] for f in feats], self.in_channels)
        top = self.ppm(feats[-1])
        outs = [top]
        for lateral, f in zip(reversed(self.lateral), reversed(feats[:-1])):
            top = lateral(f) + F.interpolate(top, size=f.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(top)
        outs.reverse()
        return [smooth(o) for smooth, o in zip(self.smooth, outs)]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        pyr = self.pyramid(features)
        return [head(pyr[lv]) for head, lv in zip(self.heads, self.levels)]


def student_level_sizes(image_size: tuple[int, int], encoder_features: list[torch.Tensor] | None = None
                        ) -> list[tuple[int, int]]:
    """Sizes of the FPN levels (strides 4..32) for an input of ``image_size``."""
    if encoder_features is not None:
        return [tuple(f.shape[-2:]) for f in encoder_features[MIN_STRIDE_LEVEL:]]
    h, w = image_size
    return [(math.ceil(h / s), math.ceil(w / s)) for s in (4, 8, 16, 32)]


# ---------------------------------------------------------------- teacher in the loop
class TeacherTargets:
    """Feature-distillation targets of a batch: ``Teacher.features`` of its items (the one item -> features
    path): image-encoding teachers (diffusion) see the student's (augmented) input images, GAN teachers
    recompute each sample from its shard recipe. ``cache``: GAN targets (independent of augmentation) are
    kept in RAM as float16 per sample after their first use."""

    def __init__(self, teacher, cache: bool = False):
        self.teacher = teacher
        self.use_recipes = not teacher.can_encode_images
        self.cache: dict[str, list[torch.Tensor]] | None = {} if cache and self.use_recipes else None

    @property
    def channels(self) -> list[int]:
        return self.teacher.channels

    def check_data(self, metas: list[dict[str, Any]]) -> None:
        """GAN teachers need a generator recipe for every training sample."""
        self.teacher.require_recipes(metas, "training samples without a generator recipe (not from this generator's "
                                            "shards)")

    @torch.no_grad()
    def __call__(self, images_pm1: torch.Tensor, metas: list[dict[str, Any]], keys: list[str]) -> list[torch.Tensor]:
        """images_pm1: [N, 3, H, W] in [-1, 1] (the student's input before normalisation); metas: the samples'
        shard/folder metas. Returns the selected levels [N, C_i, h_i, w_i] on the images' device."""
        if not self.use_recipes:
            feats = self.teacher.features(images=images_pm1)
        elif self.cache is not None and all(k in self.cache for k in keys):
            feats = [torch.stack([self.cache[k][i] for k in keys]) for i in range(len(self.channels))]
        else:
            feats = self.teacher.features(recipes=metas)
            if self.cache is not None:
                for j, k in enumerate(keys):
                    self.cache[k] = [f[j].to(torch.float16).cpu() for f in feats]
        return [f.float().to(images_pm1.device) for f in feats]

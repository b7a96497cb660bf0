"""StyleGAN2 / StyleGAN2-ADA generator (Karras et al. 2020), written from the paper in plain torch.

Module and tensor names follow NVlabs stylegan2-ada-pytorch's ``G_ema`` exactly (``mapping.fc0.weight``,
``mapping.w_avg``, ``synthesis.b4.const``, ``synthesis.b8.conv0.affine.weight``, ``synthesis.b8.conv0.noise_const``,
``synthesis.b8.torgb.weight``, ``synthesis.b4.resample_filter``, ...), so the parameters of an NVIDIA
pickle load by name (see :mod:`labelgen.generators.stylegan2_pickle`). Constructor arguments are those of
NVIDIA's ``Generator`` (z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs).

    z [N, z_dim] --mapping (normalise, num_layers x FC lrelu, lr x0.01)--> w [N, w_dim]
      --broadcast + truncation (w_avg.lerp(w, psi) on the first `cutoff` ws)--> ws [N, num_ws, w_dim]
    synthesis: b4 (const 4x4 -> conv1 -> torgb), bR for R = 8..img_resolution
               (conv0: modulated 3x3 conv, x2 up by transposed conv + [1,3,3,1] FIR; conv1: 3x3;
                torgb: modulated 1x1 without demodulation; img = up2(img) + torgb(x)  ('skip'))

Feature levels (one per synthesis block, coarse to fine): the block output ``x`` after conv1, i.e.
level i is [N, channels(res_i), res_i, res_i] with res_i = 4 * 2**i; strides img_resolution / res_i.

Recipe: ``{"seed", "truncation_psi", "truncation_cutoff", "noise_mode", "class_idx"}`` and optionally
``"w"``: a W+ list [num_ws][w_dim] (e.g. from inversion, labelgen/inversion.py) that replaces the seed's
mapped latent (a recipe with "w" needs no seed), and ``"noise"``: {layer name ("b8.conv0"): base64 of
float16 [R, R]} explicit noise maps that replace the noise mode's for those layers.
Noise: "const" (the stored noise_const buffers, default), "random" (per-seed, per-layer draws, so still
deterministic per recipe) or "none".
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labelgen.errors import LabelgenError
from labelgen.generators.base import (
    CONFIG_NAME, Generator, GeneratorOutput, check_feature_layers, check_options, check_seeds, inference, module_device,
    require_checkpoint, seeded_randn,
)

NOISE_MODES = ("const", "random", "none")
LRELU_GAIN = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------------
# resampling with plain torch ops
# ------------------------------------------------------------------------------------------------
def make_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """Separable low-pass taps -> normalised 2-D FIR filter [k, k] (sums to 1)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1:
        f = torch.outer(f, f)
    return f / f.sum()


def fir(x: torch.Tensor, f: torch.Tensor, pad: tuple[int, int, int, int], gain: float = 1.0) -> torch.Tensor:
    """Pad x [N, C, H, W] by (left, right, top, bottom) then convolve each channel with f [k, k] * gain."""
    C = x.shape[1]
    kernel = (f * gain).flip([0, 1]).to(x.dtype)[None, None].expand(C, 1, *f.shape)  # [C, 1, k, k]
    return F.conv2d(F.pad(x, list(pad)), kernel, groups=C)


def upsample2x(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W]: zero-stuffing then the FIR filter (gain 4 keeps the mean)."""
    N, C, H, W = x.shape
    y = x.new_zeros(N, C, H, 2, W, 2)
    y[:, :, :, 0, :, 0] = x
    y = y.reshape(N, C, 2 * H, 2 * W)
    k = f.shape[-1]
    pad0, pad1 = (k + 1) // 2, (k - 2) // 2  # for 4 taps: 2 before, 1 after -> exactly 2H
    return fir(y, f, (pad0, pad1, pad0, pad1), gain=4.0)


def bias_act(x: torch.Tensor, bias: torch.Tensor | None, activation: str, gain: float,
             clamp: float | None) -> torch.Tensor:
    if bias is not None:
        x = x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if activation == "lrelu":
        x = F.leaky_relu(x, 0.2)
    elif activation == "relu":
        x = F.relu(x)
    elif activation != "linear":
        raise LabelgenError(f"stylegan2: unsupported activation {activation!r} (linear, relu, lrelu)")
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def activation_gain(activation: str) -> float:
    return 1.0 if activation == "linear" else LRELU_GAIN


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


# ------------------------------------------------------------------------------------------------
# layers (names as NVlabs)
# ------------------------------------------------------------------------------------------------
class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer: stored weight ~ N(0, 1/lr^2), used as weight * lr / sqrt(in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)  # [O, I]
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, I] -> [N, O]
        x = x.matmul((self.weight * self.weight_gain).t())
        bias = None if self.bias is None else self.bias * self.bias_gain
        return bias_act(x, bias, self.activation, activation_gain(self.activation), None)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: bool = False, resample_filter: torch.Tensor | None = None) -> torch.Tensor:
    """Modulated convolution, computed by scaling activations (batched; no per-sample weights).

    x [N, I, H, W], weight [O, I, k, k], styles [N, I] -> [N, O, H', W'] (H' = 2H when up)."""
    N, I, H, W = x.shape
    O, _, kh, kw = weight.shape
    assert weight.shape[1] == I and styles.shape == (N, I), (x.shape, weight.shape, styles.shape)
    x = x * styles.reshape(N, I, 1, 1)
    if up:
        # transposed 3x3 conv with stride 2 ([N, O, 2H+1, 2W+1]) then FIR low-pass back to [N, O, 2H, 2W]
        x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        fw = resample_filter.shape[-1]
        p0, p1 = kw // 2 + (fw + 1) // 2 - (kw - 1), kw // 2 + (fw - 2) // 2 - (kw - 2)  # 1, 1 for 4 taps, 3x3
        assert p0 >= 0 and p1 >= 0, (fw, kw)
        x = fir(x, resample_filter, (p0, p1, p0, p1), gain=4.0)
    else:
        x = F.conv2d(x, weight, padding=kw // 2)
    if demodulate:
        w = weight[None] * styles.reshape(N, 1, I, 1, 1)  # [N, O, I, k, k]
        dcoefs = (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()  # [N, O]
        x = x * dcoefs.reshape(N, O, 1, 1)
    return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None):
        super().__init__()
        self.resolution, self.up, self.use_noise = resolution, up, use_noise
        self.activation, self.conv_clamp = activation, conv_clamp
        self.register_buffer("resample_filter", make_filter(resample_filter))
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str, noise_seeds: list[int] | None = None,
                salt: int = 0, gain: float = 1.0, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``noise``: explicit noise [N, 1, R, R] (inversion) instead of the noise mode's."""
        assert x.shape[2] * self.up == self.resolution, (x.shape, self.resolution)
        styles = self.affine(w)  # [N, I]
        x = modulated_conv2d(x, self.weight, styles, up=self.up == 2, resample_filter=self.resample_filter)
        if self.use_noise and noise is not None:
            x = x + noise * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            noise = seeded_randn(noise_seeds, (1, self.resolution, self.resolution), x.device, salt=salt)
            x = x + noise * self.noise_strength  # [N, 1, R, R], one draw per seed and layer
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, self.activation, activation_gain(self.activation) * gain, clamp)


class ToRGBLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [N, I]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, "linear", 1.0, self.conv_clamp)


class Conv2dLayer(nn.Module):
    """The 1x1, x2-upsampling, bias-free skip convolution of the 'resnet' synthesis architecture."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, bias: bool = False, up: int = 2,
                 resample_filter=(1, 3, 3, 1)):
        super().__init__()
        assert kernel_size == 1 and up == 2 and not bias
        self.register_buffer("resample_filter", make_filter(resample_filter))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        x = F.conv2d(upsample2x(x, self.resample_filter), self.weight * self.weight_gain)
        return x * gain


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, **layer_kwargs):
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise LabelgenError(f"stylegan2: unknown synthesis architecture {architecture!r} (orig, skip, resnet)")
        self.in_channels, self.resolution, self.architecture, self.is_last = in_channels, resolution, architecture, is_last
        self.register_buffer("resample_filter", make_filter(resample_filter))
        self.num_conv = self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, resample_filter=resample_filter)

    def forward(self, x, img, ws: torch.Tensor, noise_mode: str, noise_seeds, salt: int,
                noise_maps: dict[str, torch.Tensor] | None = None):
        # ws [N, num_conv + num_torgb, w_dim]; noise_maps: layer name ("b8.conv0") -> [N, 1, R, R]
        w_iter = iter(ws.unbind(dim=1))
        maps = noise_maps or {}
        n0, n1 = maps.get(f"b{self.resolution}.conv0"), maps.get(f"b{self.resolution}.conv1")
        if self.in_channels == 0:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)  # [N, C, 4, 4]
            x = self.conv1(x, next(w_iter), noise_mode, noise_seeds, salt, noise=n1)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode, noise_seeds, salt, noise=n0)
            x = self.conv1(x, next(w_iter), noise_mode, noise_seeds, salt + 1, gain=math.sqrt(0.5), noise=n1)
            x = y + x
        else:
            x = self.conv0(x, next(w_iter), noise_mode, noise_seeds, salt, noise=n0)  # [N, C, R, R]
            x = self.conv1(x, next(w_iter), noise_mode, noise_seeds, salt + 1, noise=n1)
        if img is not None:
            img = upsample2x(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter))
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs):
        super().__init__()
        log2 = int(round(math.log2(img_resolution))) if img_resolution > 0 else 0
        if img_resolution < 4 or 2**log2 != img_resolution:
            raise LabelgenError(f"stylegan2: img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        self.channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(self.channels[res // 2] if res > 4 else 0, self.channels[res], w_dim, res,
                                   img_channels, is_last=res == img_resolution, **block_kwargs)
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)
        # fp16 (num_fp16_res) is a speed setting of the original; this implementation always runs fp32.

    def noise_layers(self) -> dict[str, "SynthesisLayer"]:
        """Layers that add noise, by name ("b4.conv1", "b8.conv0", ...), coarse to fine."""
        return {name: module for name, module in self.named_modules()
                if isinstance(module, SynthesisLayer) and module.use_noise}

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", noise_seeds: list[int] | None = None,
                noise_maps: dict[str, torch.Tensor] | None = None):
        """ws [N, num_ws, w_dim] -> (img [N, img_channels, R, R], block outputs [N, C_res, res, res]);
        ``noise_maps``: explicit noise per layer name [N, 1, R, R] (the others follow ``noise_mode``)."""
        assert ws.ndim == 3 and ws.shape[1:] == (self.num_ws, self.w_dim), ws.shape
        x = img = None
        features, w_idx = [], 0
        for i, res in enumerate(self.block_resolutions):
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + block.num_torgb].float(), noise_mode,
                           noise_seeds, salt=1 + 2 * i, noise_maps=noise_maps)
            w_idx += block.num_conv
            features.append(x)
        return img, features


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed_features = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        layer_features = w_dim if layer_features is None else layer_features
        widths = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(widths[i], widths[i + 1], activation=activation,
                                                        lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi=1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim]; truncation_psi: float or [N] tensor."""
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.float()))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.float())))
        x = torch.cat(parts, dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_w_avg and self.w_avg_beta is not None:
            self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        x = x[:, None].repeat(1, self.num_ws, 1)  # [N, num_ws, w_dim]
        psi = torch.as_tensor(truncation_psi, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        cut = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
        truncated = self.w_avg.lerp(x[:, :cut], psi)
        return torch.cat([truncated, x[:, cut:]], dim=1)


# ------------------------------------------------------------------------------------------------
# the labelgen backend
# ------------------------------------------------------------------------------------------------
class StyleGAN2Generator(Generator):
    """StyleGAN2 generator; ``mapping`` and ``synthesis`` are named as in NVIDIA's ``G_ema``."""

    backend = "stylegan2"

    def __init__(self, img_resolution: int = 256, z_dim: int = 512, w_dim: int = 512, c_dim: int = 0,
                 img_channels: int = 3, mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None,
                 feature_layers: list[int] | None = None, truncation_psi: float = 1.0,
                 truncation_cutoff: int | None = None, noise_mode: str = "const", class_idx: int = 0):
        mapping_kwargs, synthesis_kwargs = dict(mapping_kwargs or {}), dict(synthesis_kwargs or {})
        super().__init__()
        if img_channels not in (1, 3):
            raise LabelgenError(f"stylegan2: img_channels must be 1 or 3, got {img_channels}")
        if noise_mode not in NOISE_MODES:
            raise LabelgenError(f"stylegan2: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        self.z_dim, self.w_dim, self.c_dim, self.img_channels = z_dim, w_dim, c_dim, img_channels
        self._check_class(class_idx)
        try:
            self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
            self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.synthesis.num_ws, **mapping_kwargs)
        except TypeError as e:
            raise LabelgenError(f"stylegan2: bad mapping/synthesis arguments ({e})") from None
        self.num_ws = self.synthesis.num_ws
        self.layers = check_feature_layers(feature_layers, len(self.synthesis.block_resolutions), self.backend)

    @property
    def resolution(self) -> tuple[int, int]:
        r = self.synthesis.img_resolution
        return (r, r)

    @property
    def feature_channels(self) -> list[int]:
        res = self.synthesis.block_resolutions
        return [self.synthesis.channels[res[i]] for i in self.layers]

    @property
    def feature_resolutions(self) -> list[int]:
        return [self.synthesis.block_resolutions[i] for i in self.layers]

    @property
    def feature_strides(self) -> list[int]:
        return [self.synthesis.img_resolution // r for r in self.feature_resolutions]

    # ---- latents ----
    def _check_class(self, class_idx) -> None:
        if class_idx in (None, 0) or (self.c_dim > 0 and 0 <= int(class_idx) < self.c_dim):
            return
        if self.c_dim == 0:
            raise LabelgenError(f"stylegan2: class {class_idx} given, but this generator is not conditional")
        raise LabelgenError(f"stylegan2: class {class_idx} out of range 0..{self.c_dim - 1}")

    def _recipe(self, seed: int, truncation_psi=None, truncation_cutoff=None, noise_mode=None,
                class_idx=None) -> dict[str, Any]:
        recipe = {"seed": int(seed),
                  "truncation_psi": float(self.config["truncation_psi"] if truncation_psi is None else truncation_psi),
                  "truncation_cutoff": self.config["truncation_cutoff"] if truncation_cutoff is None else truncation_cutoff,
                  "noise_mode": noise_mode or self.config["noise_mode"]}
        self._check_class(class_idx)
        if self.c_dim > 0:
            recipe["class_idx"] = int(self.config.get("class_idx", 0) if class_idx is None else class_idx)
        return recipe

    def mapped_ws(self, recipes: list[dict[str, Any]]) -> torch.Tensor:
        """W+ latents [N, num_ws, w_dim] of recipes (their "w" if given, else mapped from the seed)."""
        device = module_device(self)
        ws = torch.empty(len(recipes), self.num_ws, self.w_dim, device=device)
        mapped = [i for i, r in enumerate(recipes) if r.get("w") is None]
        if mapped:
            chosen = [recipes[i] for i in mapped]
            seeds = check_seeds([r["seed"] for r in chosen])
            z = seeded_randn(seeds, (self.z_dim,), device)  # [M, z_dim]
            c = None
            if self.c_dim > 0:
                idx = torch.tensor([int(r.get("class_idx") or 0) for r in chosen], device=device)
                if (idx < 0).any() or (idx >= self.c_dim).any():
                    raise LabelgenError(f"stylegan2: class_idx out of range 0..{self.c_dim - 1}")
                c = F.one_hot(idx, self.c_dim).float()
            psi = torch.tensor([float(r.get("truncation_psi", 1.0)) for r in chosen], device=device)
            cutoffs = {r.get("truncation_cutoff") for r in chosen}
            ws[mapped] = torch.cat([self.mapping(z[i:i + 1], None if c is None else c[i:i + 1], psi[i:i + 1],
                                                 chosen[i].get("truncation_cutoff")) for i in range(len(chosen))]) \
                if len(cutoffs) > 1 else self.mapping(z, c, psi, cutoffs.pop())
        for i, r in enumerate(recipes):
            if r.get("w") is not None:
                w = torch.as_tensor(np.asarray(r["w"], dtype=np.float32), device=device)
                if w.ndim == 1:
                    w = w[None].expand(self.num_ws, -1)
                if w.shape != (self.num_ws, self.w_dim):
                    raise LabelgenError(f"stylegan2: recipe w has shape {tuple(w.shape)}, expected "
                                        f"[{self.num_ws}, {self.w_dim}] (W+) or [{self.w_dim}] (W)")
                ws[i] = w
        return ws

    def noise_maps_of(self, recipe: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """A recipe's explicit "noise" ({layer: base64 float16 [R, R]}) -> {layer: [1, 1, R, R]}, or None."""
        import base64

        encoded = recipe.get("noise")
        if encoded is None:
            return None
        layers = self.synthesis.noise_layers()
        if not isinstance(encoded, dict) or not set(encoded) <= set(layers):
            raise LabelgenError(f"stylegan2: recipe noise must map layer names ({', '.join(layers)}) to maps")
        maps = {}
        for name, text in encoded.items():
            r = layers[name].resolution
            try:
                array = np.frombuffer(base64.b64decode(text, validate=True), dtype="<f2").reshape(r, r)
            except (ValueError, TypeError):
                raise LabelgenError(f"stylegan2: recipe noise {name!r} is not a base64 float16 [{r}, {r}] map") from None
            maps[name] = torch.from_numpy(array.astype(np.float32))[None, None].to(module_device(self))
        return maps

    @staticmethod
    def encode_noise_maps(maps: dict[str, torch.Tensor]) -> dict[str, str]:
        """{layer: [R, R] tensor} -> the recipe's "noise" (base64 of little-endian float16)."""
        import base64

        return {name: base64.b64encode(m.detach().cpu().numpy().astype("<f2").tobytes()).decode("ascii")
                for name, m in maps.items()}

    def synthesize(self, ws: torch.Tensor, noise_mode: str = "const", noise_seeds: list[int] | None = None,
                   noise_maps: dict[str, torch.Tensor] | None = None):
        """ws [N, num_ws, w_dim] -> (images [N, 3, R, R] in [-1, 1], selected block features);
        ``noise_maps``: explicit noise {layer name: [N, 1, R, R]} (inversion)."""
        img, blocks = self.synthesis(ws, noise_mode, noise_seeds, noise_maps)
        if self.img_channels == 1:
            img = img.expand(-1, 3, -1, -1)
        return img.clamp(-1, 1).float(), [blocks[i].float() for i in self.layers]

    @inference
    def _run(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        modes = {r.get("noise_mode", "const") for r in recipes}
        if not modes <= set(NOISE_MODES):
            raise LabelgenError(f"stylegan2: noise_mode must be one of {NOISE_MODES}, got {sorted(modes)}")
        ws = self.mapped_ws(recipes)
        seeds = [r.get("seed", 0) for r in recipes]  # noise seeds ("random" mode); latent-only recipes: 0
        if len(modes) <= 1 and not any("noise" in r for r in recipes):
            images, features = self.synthesize(ws, modes.pop() if modes else "const", seeds)
        else:  # mixed noise modes or explicit noise maps: one image at a time
            outs = [self.synthesize(ws[i:i + 1], r.get("noise_mode", "const"), seeds[i:i + 1], self.noise_maps_of(r))
                    for i, r in enumerate(recipes)]
            images = torch.cat([o[0] for o in outs])
            features = [torch.cat([o[1][k] for o in outs]) for k in range(len(self.layers))]
        return GeneratorOutput(images, features, [dict(r) for r in recipes])

    def sample(self, seeds: list[int], truncation_psi: float | None = None, truncation_cutoff: int | None = None,
               noise_mode: str | None = None, class_idx: int | None = None, **options) -> GeneratorOutput:
        if "truncation" in options:
            truncation_psi = options.pop("truncation")
        if options:
            raise LabelgenError(f"stylegan2: unknown sampling options {sorted(options)} "
                                "(truncation_psi, truncation_cutoff, noise_mode, class_idx)")
        return self._run([self._recipe(s, truncation_psi, truncation_cutoff, noise_mode, class_idx)
                          for s in check_seeds(seeds)])

    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        for r in recipes:
            if "seed" not in r and r.get("w") is None:
                raise LabelgenError(f"stylegan2: recipe {str(r)[:80]} has neither a seed nor a latent w")
        return self._run([{**self._recipe(r.get("seed", 0)), **r} for r in recipes])

    # ---- loading ----
    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, **options) -> "StyleGAN2Generator":
        """An NVIDIA stylegan2-ada-pytorch ``.pkl`` (G_ema, loaded without running its embedded code) or a
        ``save_pretrained`` folder. Options: feature_layers, truncation_psi (alias truncation),
        truncation_cutoff, noise_mode."""
        if "truncation" in options:
            options["truncation_psi"] = options.pop("truncation")
        check_options("stylegan2", options, ("feature_layers", "truncation_psi", "truncation_cutoff", "noise_mode",
                                             "class_idx"))
        path = require_checkpoint("stylegan2", checkpoint, "an NVIDIA .pkl such as stylegan2-ffhq-256x256.pkl, or a "
                                  "saved labelgen generator folder")
        if path.is_dir():
            return cls.from_saved_folder(path, options, f"not a saved labelgen generator (no {CONFIG_NAME})")
        from labelgen.generators.stylegan2_pickle import load_nvidia_pickle

        return load_nvidia_pickle(path, **options)

"""BigGAN-deep (Brock et al. 2019), class-conditional ImageNet generator, in the PyTorch checkpoint layout
of the published TF-Hub port (``biggan-deep-128/256/512``: ``pytorch_model.bin`` + ``config.json``).

Network (ch = channel_width, d = z_dim; every conv/linear is spectrally normalised: stored as ``weight_orig``
with the power-iteration vectors ``weight_u``, ``weight_v``; at inference W = weight_orig / (u . W v))::

    embeddings.weight                [d, num_classes]   one-hot class -> class embedding e
    cond = [z | e]                   [N, 2d]            z ~ truncated normal (|z| <= 2) x truncation
    generator.gen_z                  SNLinear 2d -> 4*4*16ch (TF order: reshaped [N, 4, 4, 16ch], then to NCHW)
    generator.layers.k               GenBlocks (and one SelfAttn at attention_layer_position): block b is
                                     bn_0 relu conv_0 (1x1, C -> C/4), bn_1 relu [up x2] conv_1 (3x3),
                                     bn_2 relu conv_2 (3x3), bn_3 relu conv_3 (1x1 -> C'), plus the skip
                                     (first C' channels, [up x2]); odd blocks up-sample
    generator.bn, .conv_to_rgb       final batch norm, relu, SNConv 3x3 ch -> ch, first 3 channels, tanh

Batch norms hold ``running_means`` / ``running_vars`` [n_stats, C] measured at n_stats truncations 0, 1/(n_stats-1),
..., 1; conditional ones scale by 1 + ``scale``(cond) and shift by ``offset``(cond). The statistics for a truncation
are looked up exactly as the port does it, bug for bug (its samples are the reference for these weights):
``coef, i = math.modf(truncation / (1 / (n_stats - 1)))``; coef == 0: point i, else
``point_i * coef + point_{i+1} * (1 - coef)`` -- the two neighbours weighted the other way round from a linear
interpolation, and float rounding of the division moves some grid values: 0.14 / 0.02 = 7.000000000000001 takes
(almost exactly) point 8, 0.58 -> point 28, 0.94 -> point 46. Everything is inferred from the state dict's names
and shapes (no flags needed).

z: ``z_sampler`` "torch" (default): a standard normal truncated to [-2, 2] by resampling, from a torch generator
seeded per row; "port": the port's ``truncated_noise_sample(batch_size=1, seed=s)`` (scipy's
``truncnorm(-2, 2).rvs`` with ``numpy.random.RandomState(s)``, float32), so a seed gives the port's sample.

Features: the output of each GenBlock (level i = block i, 4x4 -> full resolution); recipe:
``{"seed", "class", "truncation", "z_sampler"}``. Real images cannot be encoded (a GAN has no inversion here).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from labelgen.errors import LabelgenError
from labelgen.generators.base import (
    CONFIG_NAME, Generator, GeneratorOutput, check_feature_layers, check_seeds, inference, module_device,
)

# stage channel multipliers (x ch) of the published models; stage s: GenBlock (m_s -> m_s), GenBlock up (m_s -> m_s+1)
PUBLISHED_MULTIPLIERS = {128: [16, 16, 8, 4, 2, 1], 256: [16, 16, 8, 8, 4, 2, 1], 512: [16, 16, 8, 8, 4, 2, 1, 1]}
TRUNCATION_BOUND = 2.0  # z is drawn from a standard normal truncated to [-2, 2], then scaled by truncation
WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors", "pytorch_model.safetensors")
PORT_WEIGHTS_SUFFIX = "-pytorch_model.bin"  # the port's download names: biggan-deep-256-pytorch_model.bin + -config.json
Z_SAMPLERS = ("torch", "port")


class SNLinear(nn.Module):
    """Linear layer with a stored spectral normalisation (weight_orig / sigma, sigma = u . W v)."""

    def __init__(self, fan_in: int, fan_out: int, bias: bool = True):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.randn(fan_out, fan_in) / fan_in**0.5)
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None
        self.register_buffer("weight_u", F.normalize(torch.randn(fan_out), dim=0))
        self.register_buffer("weight_v", torch.zeros(fan_in))
        with torch.no_grad():  # a few power iterations: sigma near the top singular value of a new layer
            for _ in range(0 if self.weight_orig.is_meta else 3):
                self.weight_v.copy_(F.normalize(self.weight_u @ self.weight_orig, dim=0))
                self.weight_u.copy_(F.normalize(self.weight_orig @ self.weight_v, dim=0))

    def weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, w.reshape(w.shape[0], -1) @ self.weight_v)
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


class SNConv2d(SNLinear):
    """Convolution (stride 1, 'same' padding) with a stored spectral normalisation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True):
        super().__init__(c_in * kernel * kernel, c_out, bias)
        self.weight_orig = nn.Parameter(self.weight_orig.detach().reshape(c_out, c_in, kernel, kernel))
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class TruncationBatchNorm(nn.Module):
    """Batch norm with statistics stored per truncation; conditional: gain 1 + scale(cond), bias offset(cond)."""

    def __init__(self, channels: int, n_stats: int, eps: float, cond_dim: int | None):
        super().__init__()
        self.eps, self.conditional = eps, cond_dim is not None
        self.register_buffer("running_means", torch.zeros(n_stats, channels))
        self.register_buffer("running_vars", torch.ones(n_stats, channels))
        if self.conditional:
            self.scale = SNLinear(cond_dim, channels, bias=False)
            self.offset = SNLinear(cond_dim, channels, bias=False)
        else:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))

    def stats(self, truncation: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) [C] at ``truncation``, looked up as the port does (bug for bug, module docstring): its
        samples are the only reference for these weights."""
        coef, start = math.modf(float(truncation) / (1.0 / (self.running_means.shape[0] - 1)))
        i = int(start)
        if coef == 0.0:
            return self.running_means[i], self.running_vars[i]
        return (self.running_means[i] * coef + self.running_means[i + 1] * (1 - coef),
                self.running_vars[i] * coef + self.running_vars[i + 1] * (1 - coef))

    def forward(self, x: torch.Tensor, truncation: float, cond: torch.Tensor | None = None) -> torch.Tensor:
        mean, var = self.stats(truncation)
        if not self.conditional:
            return F.batch_norm(x, mean, var, self.weight, self.bias, training=False, eps=self.eps)
        x = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + self.eps)
        return x * (1 + self.scale(cond))[:, :, None, None] + self.offset(cond)[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN attention: theta (C/8), phi and g (C/8, C/2) max-pooled 2x2, o_conv back to C, x + gamma * o."""

    def __init__(self, channels: int):
        super().__init__()
        self.snconv1x1_theta = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_phi = SNConv2d(channels, channels // 8, 1, bias=False)
        self.snconv1x1_g = SNConv2d(channels, channels // 2, 1, bias=False)
        self.snconv1x1_o_conv = SNConv2d(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        theta = self.snconv1x1_theta(x).reshape(N, C // 8, H * W)  # queries
        phi = F.max_pool2d(self.snconv1x1_phi(x), 2).reshape(N, C // 8, H * W // 4)  # keys
        g = F.max_pool2d(self.snconv1x1_g(x), 2).reshape(N, C // 2, H * W // 4)  # values
        attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # [N, HW, HW/4]
        o = (g @ attn.transpose(1, 2)).reshape(N, C // 2, H, W)
        return x + self.gamma * self.snconv1x1_o_conv(o)


class GenBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, cond_dim: int, up: bool, n_stats: int, eps: float):
        super().__init__()
        if c_out > c_in:
            raise LabelgenError(f"biggan: a GenBlock cannot widen ({c_in} -> {c_out} channels)")
        mid = c_in // 4
        self.up, self.c_out = up, c_out
        widths = [(c_in, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, c_out, 1)]
        for i, (a, b, k) in enumerate(widths):
            setattr(self, f"bn_{i}", TruncationBatchNorm(a, n_stats, eps, cond_dim))
            setattr(self, f"conv_{i}", SNConv2d(a, b, k))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, truncation: float) -> torch.Tensor:
        h = x
        for i in range(4):
            h = F.relu(getattr(self, f"bn_{i}")(h, truncation, cond))
            if i == 1 and self.up:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = getattr(self, f"conv_{i}")(h)
        skip = x[:, :self.c_out]  # channel drop (c_out <= c_in)
        if self.up:
            skip = F.interpolate(skip, scale_factor=2, mode="nearest")
        return h + skip


class BigGANDeepNet(nn.Module):
    """The ``generator.*`` part: cond [N, 2d] -> (image [N, 3, R, R], GenBlock outputs)."""

    def __init__(self, ch: int, z_dim: int, multipliers: list[int], attention_layer_position: int, n_stats: int,
                 eps: float):
        super().__init__()
        cond = 2 * z_dim
        self.first = multipliers[0] * ch
        self.gen_z = SNLinear(cond, 4 * 4 * self.first)
        blocks = []
        for s in range(len(multipliers) - 1):
            blocks += [(False, multipliers[s], multipliers[s]), (True, multipliers[s], multipliers[s + 1])]
        layers: list[nn.Module] = []
        for i, (up, m_in, m_out) in enumerate(blocks):
            if i == attention_layer_position:
                layers.append(SelfAttention(m_in * ch))
            layers.append(GenBlock(m_in * ch, m_out * ch, cond, up, n_stats, eps))
        self.layers = nn.ModuleList(layers)
        self.bn = TruncationBatchNorm(ch, n_stats, eps, None)
        self.conv_to_rgb = SNConv2d(ch, ch, 3)
        self.block_levels = [(m_out * ch, 2 ** (len(multipliers) - 1 - (i + 1) // 2)) for i, (_, _, m_out) in
                             enumerate(blocks)]  # (channels, stride) of each GenBlock's output

    def forward(self, cond: torch.Tensor, truncation: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.gen_z(cond).reshape(-1, 4, 4, self.first).permute(0, 3, 1, 2)  # TF NHWC -> [N, 16ch, 4, 4]
        outputs = []
        for layer in self.layers:
            if isinstance(layer, GenBlock):
                x = layer(x, cond, truncation)
                outputs.append(x)
            else:
                x = layer(x)
        x = self.conv_to_rgb(F.relu(self.bn(x, truncation)))
        return torch.tanh(x[:, :3]), outputs


def truncated_normal(seeds: list[int], dim: int, bound: float = TRUNCATION_BOUND) -> torch.Tensor:
    """[N, dim] standard normal truncated to [-bound, bound] (resampling outliers), row k from ``seeds[k]``."""
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed) % (2**63))
        z = torch.randn(dim, generator=g)
        while (bad := z.abs() > bound).any():
            z[bad] = torch.randn(int(bad.sum()), generator=g)
        rows.append(z)
    return torch.stack(rows) if rows else torch.zeros(0, dim)


def port_truncated_normal(seeds: list[int], dim: int, bound: float = TRUNCATION_BOUND) -> torch.Tensor:
    """[N, dim], row k = the port's truncated_noise_sample(batch_size=1, dim_z=dim, seed=seeds[k]) before the
    truncation factor: scipy's truncnorm(-bound, bound).rvs(size=(1, dim), random_state=RandomState(seed)), float32."""
    from scipy.stats import truncnorm

    bad = [s for s in seeds if not 0 <= int(s) < 2**32]
    if bad:
        raise LabelgenError(f"biggan: z_sampler port takes seeds 0..{2**32 - 1} (numpy RandomState), got {bad[0]}")
    rows = [truncnorm.rvs(-bound, bound, size=(1, dim), random_state=np.random.RandomState(int(s))).astype(np.float32)
            for s in seeds]
    return torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, dim)


def draw_z(seeds: list[int], dim: int, truncation: float, sampler: str) -> torch.Tensor:
    """z [N, dim] of ``seeds`` at ``truncation`` by ``sampler`` (module docstring), scaled as the port scales it
    (float32 values times the truncation)."""
    if sampler == "port":
        return torch.from_numpy(truncation * port_truncated_normal(seeds, dim).numpy())
    return truncated_normal(seeds, dim) * truncation


def _port_config(weights: Path) -> Path:
    """The config.json that goes with a weights file (``biggan-deep-256-config.json`` beside the port's download name)."""
    return weights.with_name(weights.name[:-len(PORT_WEIGHTS_SUFFIX)] + "-config.json"
                             if weights.name.endswith(PORT_WEIGHTS_SUFFIX) else "config.json")


class BigGANGenerator(Generator):
    backend = "biggan"

    def __init__(self, resolution: int = 128, channel_width: int = 128, z_dim: int = 128, num_classes: int = 1000,
                 multipliers: list[int] | None = None, attention_layer_position: int = 8, n_stats: int = 51,
                 eps: float = 1e-4, feature_layers: list[int] | None = None, class_id: int = 0,
                 truncation: float = 0.4, z_sampler: str = "torch"):
        if multipliers is None:
            if resolution not in PUBLISHED_MULTIPLIERS:
                raise LabelgenError(f"biggan: resolution {resolution} needs multipliers (published: 128, 256, 512)")
            multipliers = PUBLISHED_MULTIPLIERS[resolution]
        multipliers = [int(m) for m in multipliers]
        if 4 * 2 ** (len(multipliers) - 1) != resolution:
            raise LabelgenError(f"biggan: {len(multipliers) - 1} up-sampling stages make {4 * 2 ** (len(multipliers) - 1)}"
                                f" pixels, not resolution {resolution}")
        super().__init__({"multipliers": multipliers})
        self._check_class(class_id)
        self._check_truncation(truncation)
        self._check_z_sampler(z_sampler)
        self.embeddings = nn.Linear(num_classes, z_dim, bias=False)
        self.generator = BigGANDeepNet(channel_width, z_dim, multipliers, attention_layer_position, n_stats, eps)
        self.layers = check_feature_layers(feature_layers, len(self.generator.block_levels), self.backend)

    def _check_class(self, class_id) -> int:
        try:
            c = int(class_id)
        except (TypeError, ValueError):
            c = -1
        if not 0 <= c < self.config["num_classes"] or isinstance(class_id, bool):
            raise LabelgenError(f"biggan: class {class_id!r} is not a class index 0..{self.config['num_classes'] - 1}")
        return c

    @staticmethod
    def _check_truncation(truncation) -> float:
        try:
            t = float(truncation)
        except (TypeError, ValueError):
            t = -1.0
        if not 0 < t <= 1:
            raise LabelgenError(f"biggan: truncation must be in (0, 1], got {truncation!r}")
        return t

    @staticmethod
    def _check_z_sampler(sampler) -> str:
        if sampler not in Z_SAMPLERS:
            raise LabelgenError(f"biggan: z_sampler must be one of {', '.join(Z_SAMPLERS)}, got {sampler!r}")
        return sampler

    @property
    def resolution(self) -> tuple[int, int]:
        return (self.config["resolution"], self.config["resolution"])

    @property
    def feature_channels(self) -> list[int]:
        return [self.generator.block_levels[i][0] for i in self.layers]

    @property
    def feature_strides(self) -> list[int]:
        return [self.generator.block_levels[i][1] for i in self.layers]

    @inference
    def _run(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        seeds = check_seeds([r["seed"] for r in recipes])
        classes = [self._check_class(r.get("class", self.config["class_id"])) for r in recipes]
        truncations = [self._check_truncation(r.get("truncation", self.config["truncation"])) for r in recipes]
        samplers = [self._check_z_sampler(r.get("z_sampler", self.config["z_sampler"])) for r in recipes]
        device = module_device(self)
        images: list[torch.Tensor | None] = [None] * len(recipes)
        features: list[list[torch.Tensor] | None] = [None] * len(recipes)
        for t in sorted(set(truncations)):  # one pass per truncation (the batch-norm statistics depend on it)
            idx = [k for k, v in enumerate(truncations) if v == t]
            z = torch.cat([draw_z([seeds[k]], self.config["z_dim"], t, samplers[k]) for k in idx]).to(device)  # [n, d]
            onehot = F.one_hot(torch.tensor([classes[k] for k in idx], device=device), self.config["num_classes"])
            cond = torch.cat([z, self.embeddings(onehot.float())], dim=1)  # [n, 2d]
            out, blocks = self.generator(cond, t)
            for j, k in enumerate(idx):
                images[k] = out[j]
                features[k] = [blocks[i][j] for i in self.layers]
        stacked = [torch.stack([f[li] for f in features]).float() for li in range(len(self.layers))]
        return GeneratorOutput(torch.stack(images).float().clamp(-1, 1), stacked,
                               [{"seed": s, "class": c, "truncation": t, "z_sampler": z}
                                for s, c, t, z in zip(seeds, classes, truncations, samplers)])

    def sample(self, seeds: list[int], class_id: int | None = None, truncation: float | None = None,
               **options) -> GeneratorOutput:
        if "class_idx" in options:  # the CLI's --class (stylegan2's name for it)
            class_id = options.pop("class_idx")
        if options:
            raise LabelgenError(f"biggan: unknown sampling options {sorted(options)} (it takes class_id, truncation)")
        c = self.config["class_id"] if class_id is None else class_id
        t = self.config["truncation"] if truncation is None else truncation
        return self._run([{"seed": s, "class": c, "truncation": t} for s in check_seeds(seeds)])

    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        for r in recipes:
            if "seed" not in r:
                raise LabelgenError(f"biggan: recipe {r!r} has no seed")
        return self._run(list(recipes))

    # ---- checkpoints ----
    @staticmethod
    def config_from_state(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
        """Architecture read off the published key layout (names and shapes)."""
        try:
            z_dim, num_classes = state["embeddings.weight"].shape
            ch = int(state["generator.conv_to_rgb.weight_orig"].shape[1])
            first = int(state["generator.gen_z.bias"].shape[0]) // 16
            n_stats = int(state["generator.bn.running_means"].shape[0])
        except (KeyError, ValueError) as e:
            raise LabelgenError(f"{path}: not a BigGAN-deep generator state dict (no {e} in the published layout: "
                                "embeddings.weight, generator.gen_z.*, generator.layers.*, generator.bn.*)") from None
        modules = sorted({int(k.split(".")[2]) for k in state if k.startswith("generator.layers.")})
        attention = [i for i in modules if f"generator.layers.{i}.gamma" in state]
        blocks = [i for i in modules if i not in attention]
        if len(attention) != 1 or len(blocks) < 2 or len(blocks) % 2:
            raise LabelgenError(f"{path}: expected pairs of GenBlocks and one attention layer under generator.layers "
                                f"(found {len(blocks)} blocks, {len(attention)} attention layers)")
        multipliers = [first // ch] + [int(state[f"generator.layers.{b}.conv_3.weight_orig"].shape[0]) // ch
                                       for b in blocks[1::2]]
        return {"resolution": 4 * 2 ** (len(multipliers) - 1), "channel_width": ch, "z_dim": int(z_dim),
                "num_classes": int(num_classes), "multipliers": multipliers, "attention_layer_position": attention[0],
                "n_stats": n_stats}

    @classmethod
    def side_files(cls, checkpoint: Path, options: dict[str, Any]) -> list[Path]:
        """The port's config.json beside a weights file (its eps)."""
        published = _port_config(checkpoint)
        return [published] if published.is_file() else []

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, feature_layers: list[int] | None = None,
                        **options) -> "BigGANGenerator":
        """A published BigGAN-deep ``pytorch_model.bin`` (or .safetensors, or the port's download name
        ``biggan-deep-256-pytorch_model.bin``), a folder holding one (with its config.json /
        ``biggan-deep-256-config.json``), or a save_pretrained folder. Options: feature_layers, class_id,
        truncation, z_sampler."""
        import json

        from labelgen.generators.state_dicts import read_state_dict
        from labelgen.pretrained import fit_weights

        if "class_idx" in options:  # the CLI's --class (stylegan2's name for it)
            options["class_id"] = options.pop("class_idx")
        unknown = set(options) - {"class_id", "truncation", "z_sampler"}
        if unknown:
            raise LabelgenError(f"biggan: unknown options {sorted(unknown)} (it takes feature_layers, class_id, "
                                "truncation, z_sampler)")
        if feature_layers is not None:
            options["feature_layers"] = feature_layers
        if checkpoint is None:
            raise LabelgenError("biggan has no default weights: pass --checkpoint (biggan-deep-256's "
                                "pytorch_model.bin, or its folder)")
        path = Path(checkpoint)
        if path.is_dir() and (path / CONFIG_NAME).is_file():  # a save_pretrained folder
            return cls.build_pretrained(path, **options)
        if path.is_dir():
            found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
            found = found or sorted(path.glob("*" + PORT_WEIGHTS_SUFFIX))
            if not found:
                raise LabelgenError(f"{path}: no {' / '.join(WEIGHT_FILES)} or *{PORT_WEIGHTS_SUFFIX} in this folder")
            if len(found) > 1 and found[0].name.endswith(PORT_WEIGHTS_SUFFIX):
                raise LabelgenError(f"{path}: several *{PORT_WEIGHTS_SUFFIX} files ({', '.join(f.name for f in found)}):"
                                    " pass the one to load as --checkpoint")
            path = found[0]
        state = read_state_dict(path, "BigGAN-deep")
        config = cls.config_from_state(state, path)
        published = _port_config(path)
        if published.is_file():  # the port's config.json: only eps is not in the weights
            try:
                config["eps"] = float(json.loads(published.read_text()).get("eps", 1e-4))
            except (ValueError, OSError, AttributeError):
                raise LabelgenError(f"{published}: unreadable BigGAN config.json") from None
        model = cls(**config, **options)
        fit_weights(model, state, path, "BigGAN-deep generator its key layout describes")
        return model.eval()

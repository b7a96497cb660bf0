"""OpenAI's ADM UNet (guided-diffusion, Dhariwal & Nichol 2021) as a pixel-space diffusion teacher.

The published unconditional checkpoints (``lsun_bedroom.pt``, ``lsun_cat.pt``, ``lsun_horse.pt``,
``256x256_diffusion_uncond.pt``, DDPM-seg's ``ffhq.pt``) are plain state dicts: this module builds the same
network from the published *model flags* (written here, not imported: no guided-diffusion code) and copies
the tensors in by parameter name (``torch.load(weights_only=True)`` or safetensors; anything needing more
than tensors is refused).

Network (flag names as guided-diffusion's command line; C = num_channels, E = 4 C)::

    time_embed.{0,2}            Linear(C, E), SiLU, Linear(E, E) on the sinusoidal embedding of t ([cos | sin])
    input_blocks.0.0            Conv 3x3, 3 -> C * channel_mult[0]
    input_blocks.k              per level: num_res_blocks x [ResBlock (+ AttentionBlock where the level's
                                resolution is in attention_resolutions)], then a down-sampler (a ResBlock with
                                down=True when resblock_updown, else Downsample) except after the last level
    middle_block.{0,1,2}        ResBlock, AttentionBlock, ResBlock
    output_blocks.k             per level, coarse to fine: (num_res_blocks + 1) x [ResBlock on concat(h, skip)
                                (+ AttentionBlock)], the last of a level (not the finest) ending in an up-sampler
    out.{0,2}                   GroupNorm, SiLU, Conv 3x3 -> 3 (or 6 with learn_sigma: eps = the first 3)

ResBlock: ``in_layers`` (norm, SiLU, conv), ``emb_layers`` (SiLU, Linear E -> 2 C' with use_scale_shift_norm:
h = norm(h) (1 + scale) + shift), ``out_layers`` (norm, SiLU, dropout, conv), ``skip_connection`` (1x1 conv
when the width changes). AttentionBlock: ``norm``, ``qkv`` (Conv1d C -> 3C), ``proj_out``; heads =
C / num_head_channels (or num_heads); "legacy" order splits heads first ([q k v] per head), the new order
(use_new_attention_order) splits q, k, v first. Group norms (32 groups) run in float32.

Features (DDPM-seg): the outputs of ``output_blocks[i]`` (i in ``feature_layers``) at ``timesteps``; the
default for the published 256x256 layout is DDPM-seg's blocks 5, 6, 7, 8, 12 at t = 50, 150, 250
(2,816 channels per timestep), otherwise all output blocks. Noise schedule: linear (or cosine) betas over
``diffusion_steps`` in float64; sampling: guided-diffusion's DDIM (``ADMGenerator._ddim_sampler``: eps re-derived
from the clipped x0, its "ddimN" respacing), not diffusers' (which keeps the raw eps and spaces steps otherwise).

Flags come from ``preset`` (:data:`ADM_PRESETS`), a ``flags`` dict, or a ``<checkpoint stem>.json/.yaml``
(or ``model_flags.json/.yaml``) beside the checkpoint; ``flags`` override a preset.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from labelgen.errors import LabelgenError
from labelgen.generators.base import CONFIG_NAME, check_options, parse_bool, require_checkpoint
from labelgen.generators.diffusion import PixelDiffusionGenerator

# guided-diffusion's model flags that shape the network / schedule, with its defaults
FLAG_DEFAULTS: dict[str, Any] = {
    "image_size": 64, "num_channels": 128, "num_res_blocks": 2, "num_heads": 4, "num_heads_upsample": -1,
    "num_head_channels": -1, "attention_resolutions": "16,8", "channel_mult": "", "class_cond": False,
    "use_scale_shift_norm": True, "resblock_updown": False, "use_new_attention_order": False,
    "learn_sigma": False, "diffusion_steps": 1000, "noise_schedule": "linear", "predict_xstart": False,
    "rescale_timesteps": False,
}
# flags of their scripts that do not change the network's function at inference: accepted, not used
IGNORED_FLAGS = frozenset({"dropout", "use_fp16", "use_checkpoint", "timestep_respacing", "use_kl",
                           "rescale_learned_sigmas", "batch_size", "num_samples", "clip_denoised", "use_ddim",
                           "model_path", "lr", "microbatch", "log_interval", "save_interval", "ema_rate"})
# the published 256x256 unconditional models (guided-diffusion README; DDPM-seg's FFHQ model uses the same)
_PUBLISHED_256 = {"image_size": 256, "num_channels": 256, "num_res_blocks": 2, "num_head_channels": 64,
                  "attention_resolutions": "32,16,8", "learn_sigma": True, "resblock_updown": True,
                  "use_scale_shift_norm": True, "noise_schedule": "linear", "diffusion_steps": 1000,
                  "class_cond": False}
ADM_PRESETS: dict[str, dict[str, Any]] = {
    "lsun-256": _PUBLISHED_256,  # lsun_bedroom.pt, lsun_cat.pt, lsun_horse.pt, lsun_horse_nodropout.pt
    "ffhq-256": _PUBLISHED_256,  # DDPM-seg's ffhq.pt
    "imagenet-256-uncond": _PUBLISHED_256,  # 256x256_diffusion_uncond.pt
}
DDPM_SEG_BLOCKS = [5, 6, 7, 8, 12]  # DDPM-seg's default output blocks for the 256x256 layout
DEFAULT_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
OPTION_KEYS = ("preset", "flags", "timesteps", "feature_layers", "ddim_steps", "noise_seed", "share_noise", "fp16",
               "bf16", "channels_last", "compile", "max_batch")


def _int_tuple(value: Any, name: str, cast=int) -> tuple:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):  # YAML reads "16" as a number
        value = [value]
    try:
        return tuple(cast(v) for v in value)
    except (TypeError, ValueError):
        raise LabelgenError(f"adm flags: {name} must be comma-separated numbers, got {value!r}") from None


def normalize_flags(raw: dict[str, Any]) -> dict[str, Any]:
    """guided-diffusion model flags -> the complete, checked, JSON-able set this module builds from."""
    if not isinstance(raw, dict):
        raise LabelgenError(f"adm flags: expected a mapping of flag names to values, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(FLAG_DEFAULTS) - IGNORED_FLAGS)
    if unknown:
        raise LabelgenError(f"adm flags: unknown {unknown} (known: {', '.join(FLAG_DEFAULTS)})")
    flags = {**FLAG_DEFAULTS, **{k: v for k, v in raw.items() if k in FLAG_DEFAULTS}}
    for key in (k for k, v in FLAG_DEFAULTS.items() if isinstance(v, bool)):  # bool("False") would be True
        parsed = parse_bool(flags[key])
        if parsed is None:
            raise LabelgenError(f"adm flags: {key} must be true or false (or yes/no, 1/0), got {flags[key]!r}")
        flags[key] = parsed
    for key in ("class_cond", "predict_xstart", "rescale_timesteps"):
        if flags[key]:
            raise LabelgenError(f"adm flags: {key}=True is not supported (the unconditional, eps-predicting "
                                "published models are)")
    if flags["noise_schedule"] not in ("linear", "cosine"):
        raise LabelgenError(f"adm flags: noise_schedule must be linear or cosine, got {flags['noise_schedule']!r}")
    size = int(flags["image_size"])
    mult = flags["channel_mult"]
    if mult in ("", None, []):
        if size not in DEFAULT_CHANNEL_MULT:
            raise LabelgenError(f"adm flags: no default channel_mult for image_size {size}: give channel_mult")
        mult = DEFAULT_CHANNEL_MULT[size]
    mult = _int_tuple(mult, "channel_mult", float)
    out = {"image_size": size, "num_channels": int(flags["num_channels"]),
           "num_res_blocks": int(flags["num_res_blocks"]), "num_heads": int(flags["num_heads"]),
           "num_heads_upsample": int(flags["num_heads_upsample"]), "num_head_channels": int(flags["num_head_channels"]),
           "attention_resolutions": list(_int_tuple(flags["attention_resolutions"], "attention_resolutions")),
           "channel_mult": [int(m) if float(m).is_integer() else float(m) for m in mult],
           "use_scale_shift_norm": flags["use_scale_shift_norm"], "resblock_updown": flags["resblock_updown"],
           "use_new_attention_order": flags["use_new_attention_order"], "learn_sigma": flags["learn_sigma"],
           "diffusion_steps": int(flags["diffusion_steps"]), "noise_schedule": str(flags["noise_schedule"])}
    if size % 2 ** (len(mult) - 1):
        raise LabelgenError(f"adm flags: image_size {size} is not divisible by 2^{len(mult) - 1} (channel_mult {mult})")
    if out["num_res_blocks"] < 1 or out["num_channels"] < 1 or out["diffusion_steps"] < 1:
        raise LabelgenError("adm flags: num_res_blocks, num_channels and diffusion_steps must be positive")
    return out


def read_flags_file(path: Path | str) -> dict[str, Any]:
    """Model flags from a JSON or YAML file (a mapping of guided-diffusion flag names to values)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise LabelgenError(f"{path}: cannot read the model flags ({e.strerror or e})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError / yaml.YAMLError
        raise LabelgenError(f"{path}: unreadable model flags ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(data, dict):
        raise LabelgenError(f"{path}: model flags must be a mapping of flag names to values")
    return data


def flags_beside(checkpoint: Path) -> Path | None:
    """``<stem>.json|.yaml|.yml`` or ``model_flags.json|.yaml|.yml`` next to a checkpoint file."""
    for stem in (checkpoint.stem, "model_flags"):
        for suffix in (".json", ".yaml", ".yml"):
            candidate = checkpoint.with_name(stem + suffix)
            if candidate.is_file() and candidate != checkpoint:
                return candidate
    return None


def resolve_flags(checkpoint: Path | None, preset: str | None, flags: dict[str, Any] | None) -> dict[str, Any]:
    """The model flags of a checkpoint: preset, then ``flags`` on top; neither: the file beside it."""
    if preset is not None and preset not in ADM_PRESETS:
        raise LabelgenError(f"adm: unknown preset {preset!r} (one of {', '.join(ADM_PRESETS)})")
    if preset is None and flags is None:
        beside = flags_beside(checkpoint) if checkpoint is not None else None
        if beside is None:
            raise LabelgenError(f"{checkpoint}: no model flags: pass --preset ({', '.join(ADM_PRESETS)}) or "
                                f"--model-flags FILE, or put {checkpoint.stem if checkpoint else '<stem>'}.json "
                                "(guided-diffusion flag names) beside the checkpoint")
        return normalize_flags(read_flags_file(beside))
    return normalize_flags({**ADM_PRESETS.get(preset or "", {}), **(flags or {})})


def default_feature_blocks(flags: dict[str, Any]) -> list[int] | None:
    """DDPM-seg's blocks for the published 256x256 layout (6 levels x 3 output blocks); None (all) otherwise."""
    if len(flags["channel_mult"]) == 6 and flags["num_res_blocks"] == 2:
        return list(DDPM_SEG_BLOCKS)
    return None


# ------------------------------------------------------------------------------------------------ network
class GroupNorm32(nn.GroupNorm):
    """32-group norm computed in float32 (as the published models were trained), result in the input dtype."""

    def __init__(self, channels: int):
        if channels % 32:
            raise LabelgenError(f"adm: {channels} channels are not divisible by the 32 norm groups")
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """t [N] -> [N, dim]: cos of t * f_k, then sin, f_k = max_period^(-k / half) (zero-padded to odd dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # [N, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class Upsample(nn.Module):
    """Nearest x2 (+ 3x3 conv ``conv`` when use_conv)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv ``op`` when use_conv, else 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, scale_shift: bool,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.out_channels, self.scale_shift, self.updown = out_channels, scale_shift, up or down
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels * (2 if scale_shift else 1)))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](self.h_upd(h))  # resample between the activation and the conv
        x = self.x_upd(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]  # [N, C' or 2C', 1, 1]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int, num_head_channels: int, new_order: bool):
        super().__init__()
        if num_head_channels != -1:
            if channels % num_head_channels:
                raise LabelgenError(f"adm: {channels} channels are not divisible by num_head_channels {num_head_channels}")
            num_heads = channels // num_head_channels
        self.heads, self.new_order = num_heads, new_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N, C, H, W = x.shape
        qkv = self.qkv(self.norm(x).reshape(N, C, H * W))  # [N, 3C, L]
        d = C // self.heads
        if self.new_order:  # [q(all heads) | k | v]
            q, k, v = qkv.reshape(N, 3, self.heads, d, H * W).unbind(1)
        else:  # legacy: per head [q | k | v]
            q, k, v = qkv.reshape(N, self.heads, 3 * d, H * W).split(d, dim=2)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))  # [N, h, L, d]
        h = self.proj_out(a.transpose(-1, -2).reshape(N, C, H * W))
        return x + h.reshape(N, C, H, W)


class EmbedSequential(nn.Sequential):
    """Runs its layers in order, giving the timestep embedding to the res blocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """The network of the module docstring. ``levels[i]`` = (channels, stride) of output_blocks[i]'s output."""

    def __init__(self, flags: dict[str, Any]):
        super().__init__()
        C, mult, R = flags["num_channels"], flags["channel_mult"], flags["num_res_blocks"]
        E = 4 * C
        attn_ds = {flags["image_size"] // r for r in flags["attention_resolutions"]}
        heads, head_ch = flags["num_heads"], flags["num_head_channels"]
        heads_up = heads if flags["num_heads_upsample"] == -1 else flags["num_heads_upsample"]
        ss, updown, new_order = flags["use_scale_shift_norm"], flags["resblock_updown"], flags["use_new_attention_order"]
        self.model_channels = C
        self.time_embed = nn.Sequential(nn.Linear(C, E), nn.SiLU(), nn.Linear(E, E))
        ch = int(mult[0] * C)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(3, ch, 3, padding=1))])
        skips, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(R):
                layers: list[nn.Module] = [ResBlock(ch, E, int(m * C), ss)]
                ch = int(m * C)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads, head_ch, new_order))
                self.input_blocks.append(EmbedSequential(*layers))
                skips.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(EmbedSequential(ResBlock(ch, E, ch, ss, down=True) if updown
                                                         else Downsample(ch, True)))
                skips.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential(ResBlock(ch, E, ch, ss), AttentionBlock(ch, heads, head_ch, new_order),
                                            ResBlock(ch, E, ch, ss))
        self.output_blocks = nn.ModuleList()
        self.levels: list[tuple[int, int]] = []
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(R + 1):
                layers = [ResBlock(ch + skips.pop(), E, int(m * C), ss)]
                ch = int(m * C)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, heads_up, head_ch, new_order))
                if level and i == R:
                    layers.append(ResBlock(ch, E, ch, ss, up=True) if updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))
                self.levels.append((ch, ds))
        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, 6 if flags["learn_sigma"] else 3, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x [N, 3, H, W], t [N] (0..diffusion_steps-1) -> [N, 3 or 6, H, W]."""
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))
        skips, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


# ------------------------------------------------------------------------------------------------ backend
def alphas_cumprod(flags: dict[str, Any]) -> np.ndarray:
    """abar_t in float64 (as guided-diffusion computes it): linear betas 1e-4 .. 0.02 scaled by 1000 / diffusion_steps,
    or the cosine schedule (abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, betas capped at 0.999)."""
    T = flags["diffusion_steps"]
    if flags["noise_schedule"] == "cosine":
        f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
        betas = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)], dtype=np.float64)
    else:
        scale = 1000 / T
        betas = np.linspace(scale * 1e-4, scale * 0.02, T, dtype=np.float64)
    return np.cumprod(1 - betas)


def ddim_timesteps(steps: int, diffusion_steps: int) -> list[int]:
    """guided-diffusion's "ddimN" respacing (ascending): range(0, T, stride) for the smallest stride in 1..T-1 that
    gives exactly ``steps`` timesteps; a count no integer stride gives is refused, as guided-diffusion refuses it."""
    counts = {}
    for stride in range(diffusion_steps - 1, 0, -1):  # smallest stride last: it wins
        counts[len(range(0, diffusion_steps, stride))] = stride
    if steps in counts:
        return list(range(0, diffusion_steps, counts[steps]))
    nearest = [c for c in (max((c for c in counts if c < steps), default=None),
                           min((c for c in counts if c > steps), default=None)) if c is not None]
    raise LabelgenError(f"adm: ddim_steps {steps} is refused: no integer stride makes exactly {steps} of "
                        f"{diffusion_steps} diffusion steps (guided-diffusion's ddimN respacing); nearest: "
                        f"{' or '.join(map(str, nearest))}")


def respaced_alphas_cumprod(abar: np.ndarray, kept: list[int]) -> np.ndarray:
    """guided-diffusion's respaced schedule: betas rebuilt at the kept timesteps (1 - abar_t / abar of the previous
    kept one, 1 before the first), then their cumulative product (abar at the kept steps, in its rounding)."""
    betas, last = [], 1.0
    for t in kept:
        betas.append(1 - abar[t] / last)
        last = abar[t]
    return np.cumprod(1 - np.array(betas, dtype=np.float64))


class ADMGenerator(PixelDiffusionGenerator):
    backend = "adm"

    def __init__(self, flags: dict[str, Any], timesteps: list[int] | None = None,
                 feature_layers: list[int] | None = None, ddim_steps: int = 50, noise_seed: int = 0,
                 share_noise: bool | str = False, fp16: bool | str = "auto", bf16: bool | str = "auto",
                 channels_last: bool | str = "auto", compile: bool | str = "auto", max_batch: int = 16):
        flags = normalize_flags(flags)
        shared = parse_bool(share_noise)
        if shared is None:
            raise LabelgenError(f"adm: share_noise must be true or false, got {share_noise!r}")
        super().__init__({"flags": flags, "share_noise": shared})
        self.flags = flags
        self.unet = ADMUNet(flags)
        self.alphas_cumprod = alphas_cumprod(flags)  # float64 [diffusion_steps]
        ddim_timesteps(int(ddim_steps), flags["diffusion_steps"])  # a default step count it refuses: refused now
        if feature_layers is None:
            feature_layers = default_feature_blocks(flags)
        self._setup_features(timesteps, feature_layers, flags["diffusion_steps"])

    @property
    def resolution(self) -> tuple[int, int]:
        return (self.flags["image_size"], self.flags["image_size"])

    def unet_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t)[:, :3]  # learn_sigma: channels 3..5 are the variance interpolation, unused by DDIM

    # ---- guided-diffusion's noising and DDIM ----
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """guided-diffusion's q_sample: sqrt(abar_t) and sqrt(1 - abar_t) computed in float64, applied in float32."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        a = torch.from_numpy(self.alphas_cumprod)[t.cpu()]
        return (a.sqrt().float().to(x0.device).view(shape) * x0
                + (1 - a).sqrt().float().to(x0.device).view(shape) * noise)

    def _ddim_sampler(self, steps: int, device: torch.device):
        """guided-diffusion's ddim_sample at eta 0 with clip_denoised (its scripts' default): x0 from eps, clipped to
        [-1, 1], eps re-derived from the clipped x0, x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps, over its
        "ddimN" respacing; the UNet sees the original timestep indices (rescale_timesteps is off); coefficients in
        float64, applied in float32, as there."""
        kept = ddim_timesteps(steps, self.flags["diffusion_steps"])
        abar = respaced_alphas_cumprod(self.alphas_cumprod, kept)
        index = {t: k for k, t in enumerate(kept)}
        recip, recipm1, prev = (torch.from_numpy(a).float().to(device)
                                for a in (np.sqrt(1 / abar), np.sqrt(1 / abar - 1), np.append(1.0, abar[:-1])))

        def step(eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            k = index[int(t)]
            x0 = (recip[k] * x - recipm1[k] * eps).clamp(-1, 1)
            eps = (recip[k] * x - x0) / recipm1[k]
            return x0 * prev[k].sqrt() + (1 - prev[k]).sqrt() * eps

        return torch.tensor(kept[::-1], device=device), step

    # ---- feature levels: output blocks ----
    def _level_channels_and_strides(self) -> list[tuple[int, int]]:
        return list(self.unet.levels)

    def _hook_level(self, i: int, store: list[torch.Tensor]):
        return self.unet.output_blocks[i].register_forward_hook(lambda m, args, out: store.append(out.float()))

    # ---- checkpoints ----
    @classmethod
    def side_files(cls, checkpoint: Path, options: dict[str, Any]) -> list[Path]:
        """The model flags file beside the checkpoint, when neither ``preset`` nor ``flags`` replaces it."""
        beside = flags_beside(checkpoint) if options.get("preset") is None and options.get("flags") is None else None
        return [] if beside is None else [beside]

    @classmethod
    def from_checkpoint(cls, checkpoint: Path | str | None, preset: str | None = None,
                        flags: dict[str, Any] | None = None, **options) -> "ADMGenerator":
        """A guided-diffusion ``.pt`` state dict (or .safetensors) + its model flags, or a save_pretrained folder.
        Options: preset, flags, timesteps, feature_layers, ddim_steps, noise_seed, share_noise, fp16, bf16,
        channels_last, compile, max_batch."""
        from labelgen.generators.state_dicts import read_state_dict
        from labelgen.pretrained import fit_weights

        check_options("adm", options, OPTION_KEYS)
        path = require_checkpoint("adm", checkpoint, "a guided-diffusion .pt such as lsun_horse.pt, with --preset or "
                                  "--model-flags")
        if path.is_dir():
            return cls.from_saved_folder(path, options, f"a folder without {CONFIG_NAME}: pass the guided-diffusion "
                                                        ".pt file")
        resolved = resolve_flags(path, preset, flags)
        state = read_state_dict(path, "guided-diffusion UNet")
        model = cls(resolved, **options)
        fit_weights(model.unet, state, path, "ADM UNet built from its flags")
        return model.eval()

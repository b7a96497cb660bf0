"""Machinery shared by the diffusion backends (DDPM pixel space, Stable Diffusion latent space).

Features of an image (DDPM-seg / DreamTeacher style): encode it to the UNet's space (identity for DDPM,
VAE mean latent for SD), noise it to each timestep t in ``timesteps`` with noise drawn from a fixed seed
(``noise_seed``, the same for every image, so features are a deterministic function of the image alone; one
noise tensor per timestep, or with ``share_noise`` (adm; DDPM-seg's protocol) one for all timesteps),
run ONE batched UNet pass over all (image, t) pairs and capture, with forward hooks, the output of each
decoder up-block *before its upsampler* (level i = ``unet.up_blocks[i]``, coarse to fine).

Flat feature order: level-major, then timestep — ``features[li * len(timesteps) + ti]`` is level
``feature_layers[li]`` at ``timesteps[ti]`` (``feature_channels`` is in the same order).

Sampling: DDIM (eta 0, ``ddim_steps`` steps; diffusers' DDIMScheduler built from the model's scheduler config,
or for ADM guided-diffusion's own DDIM and step spacing, see adm.py) from x_T drawn per seed, so an image never
depends on its batch; ``sample`` returns the decoded images, quantised to uint8 levels (what a saved PNG holds),
and ``features_of_images`` of them.

Speed (generator options, MACHINE_OPTIONS in base.py; "auto" = on for CUDA, off on CPU; true/false as given):
  * ``bf16``: bf16 autocast of the UNet (CUDA only: an explicit true on CPU stays fp32, as before).
  * ``fp16`` (adm only): fp16 autocast instead, over bf16 (CUDA only; adm's default "auto": DDPM-seg's fp16).
  * ``channels_last``: UNet weights and inputs in NHWC memory format (CUDA only).
  * ``compile``: the DDIM loop's UNet through ``torch.compile(mode=COMPILE_MODE, dynamic=False)``; every call
    has ``max_batch`` rows (the last partial micro-batch is padded by repeating its last row and the padding
    is cut off again), so one graph serves a whole run. An explicit true also compiles on CPU (needs a C++
    toolchain). If compiling fails (no compiler, any exception on the first call) the loop falls back to the
    eager UNet with one warning line. The feature capture pass (hooks on up-blocks, T rows per image) stays
    eager: a compiled graph does not re-trace forward hooks registered per call (dynamo skips hook guards),
    so a compiled capture could return stale features silently; it gets bf16 + channels_last.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable

import torch

from labelgen.errors import LabelgenError
from labelgen.imaging import quantize
from labelgen.run import option_on
from labelgen.generators.base import (
    MACHINE_OPTIONS, Generator, GeneratorOutput, check_feature_layers, check_seeds, inference, machine_option,
    module_device, seeded_randn,
)

DEFAULT_TIMESTEPS = [50, 150, 250]
# torch.compile mode of the DDIM loop: static shapes (padded micro-batches) make autotuning pay off once per run;
# no CUDA graphs, because their output buffers are overwritten by the next replay while the loop still holds
# the outputs of earlier micro-batches (torch.cat of all of them per step).
COMPILE_MODE = "max-autotune-no-cudagraphs"


def plain_config(config) -> dict[str, Any]:
    """A diffusers config (FrozenDict) as JSON-able dict without private ``_`` keys (tuples -> lists)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dict(config).items() if not k.startswith("_")}


class DiffusionGenerator(Generator):
    """Base of the diffusion backends: subclasses set ``self.unet`` and either ``self.scheduler_config`` +
    ``self.noise_scheduler`` (diffusers) or their own :meth:`add_noise` and :meth:`_ddim_sampler` (ADM), and
    implement :meth:`encode`, :meth:`decode`, :meth:`unet_eps` and :attr:`latent_shape`."""

    can_encode_images = True
    unet: torch.nn.Module

    def _setup_features(self, timesteps, feature_layers, num_train_timesteps: int) -> None:
        for name in MACHINE_OPTIONS:  # the constructor's bf16, channels_last, compile (adm: fp16): "auto", True, False
            if name in self.config:
                self.config[name] = machine_option(name, self.config[name])
        try:
            self.timesteps = [int(t) for t in (DEFAULT_TIMESTEPS if timesteps is None else timesteps)]
        except (TypeError, ValueError):
            raise LabelgenError(f"{self.backend}: timesteps must be a list of integers, got {timesteps!r}") from None
        if not self.timesteps or any(not 0 <= t < num_train_timesteps for t in self.timesteps):
            raise LabelgenError(f"{self.backend}: timesteps must be a non-empty list in 0..{num_train_timesteps - 1}, "
                                f"got {self.timesteps}")
        self.layers = check_feature_layers(feature_layers, len(self._level_channels_and_strides()), self.backend)

    # ---- to implement ----
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the space the UNet denoises."""
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, H, W] in [-1, 1] -> x0 in UNet space [N, *latent_shape]."""
        raise NotImplementedError

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 in UNet space -> images [N, 3, H, W] in [-1, 1]."""
        raise NotImplementedError

    def unet_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet's raw output for noisy x [B, *latent_shape] at timesteps t [B]."""
        raise NotImplementedError

    # ---- feature layout (diffusers UNets; a UNet of another layout overrides these two) ----
    def _level_channels_and_strides(self) -> list[tuple[int, int]]:
        """(channels, stride in the UNet's space) of each feature level: an up block's pre-upsample output."""
        out = []
        blocks = list(self.unet.up_blocks)
        for i, block in enumerate(blocks):
            ups = sum(1 for b in blocks[i:] if getattr(b, "upsamplers", None))
            out.append((block.resnets[-1].out_channels, 2**ups))
        return out

    def _hook_level(self, i: int, store: list[torch.Tensor]):
        """Register a hook that appends level ``i``'s activation (float32) to ``store``; returns its handle."""
        block = self.unet.up_blocks[i]
        if getattr(block, "upsamplers", None):
            return block.upsamplers[0].register_forward_pre_hook(lambda m, args: store.append(args[0].float()))
        return block.register_forward_hook(
            lambda m, args, out: store.append((out[0] if isinstance(out, tuple) else out).float()))

    @property
    def feature_channels(self) -> list[int]:
        levels = self._level_channels_and_strides()
        return [levels[i][0] for i in self.layers for _ in self.timesteps]

    @property
    def feature_strides(self) -> list[int]:
        levels = self._level_channels_and_strides()
        scale = self.resolution[0] // self.latent_shape[1]  # image pixels per UNet pixel (SD: the VAE's factor)
        return [levels[i][1] * scale for i in self.layers for _ in self.timesteps]

    # ---- options (see the module docstring) ----
    def _option_on(self, name: str, device: torch.device) -> bool:
        """bf16 / channels_last: "auto" or true on CUDA, never on CPU. compile: "auto" on CUDA, true anywhere."""
        return option_on(self.config.get(name, "auto"), device, true_anywhere=name == "compile")

    def _autocast(self, device: torch.device):
        """fp16 autocast where the backend has an ``fp16`` option that is on (adm: guided-diffusion's use_fp16, as
        DDPM-seg runs it), else bf16 autocast where ``bf16`` is on; CUDA only."""
        if option_on(self.config.get("fp16", False), device):
            return torch.autocast("cuda", dtype=torch.float16)
        if self._option_on("bf16", device):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self._option_on("channels_last", x.device):
            if not getattr(self, "_unet_channels_last", False):  # once: the weights too, else NHWC inputs gain nothing
                self.unet.to(memory_format=torch.channels_last)
                self._unet_channels_last = True
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def max_batch(self) -> int:
        return int(self.config.get("max_batch") or 16)

    def _compiled_unet(self, device: torch.device) -> Callable | None:
        """The compiled ``unet_eps`` of the DDIM loop, or None (eager: option off, or compiling failed)."""
        if not self._option_on("compile", device):
            return None
        state = self.__dict__.setdefault("_compile_state", {})
        if "fn" not in state:
            try:
                state["fn"] = torch.compile(self.unet_eps, mode=COMPILE_MODE, dynamic=False)
            except Exception as e:  # e.g. torch.compile unsupported on this Python / platform
                self._compile_failed(e)
        return state["fn"]

    def _compile_failed(self, error: Exception) -> None:
        self._compile_state.update(fn=None, ok=False)
        print(f"warning: {self.backend}: torch.compile of the UNet failed ({type(error).__name__}: "
              f"{(str(error).splitlines() or [''])[0][:160]}); sampling with the eager UNet", file=sys.stderr)

    def _sample_eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """UNet output of one DDIM micro-batch x [n <= max_batch, C, h, w] at timesteps t [n]: compiled with
        static shape (padded to max_batch rows, padding cut off) when ``compile`` is on, else eager."""
        fn = self._compiled_unet(x.device)
        if fn is None:
            return self.unet_eps(self._prepare(x), t)
        n = x.shape[0]
        pad = self.max_batch - n
        if pad > 0:  # repeat the last row: rows never interact, so the real rows are unchanged
            x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
            t = torch.cat([t, t[-1:].expand(pad)])
        try:
            out = fn(self._prepare(x), t.contiguous())
        except Exception as e:
            if self._compile_state.get("ok"):  # compiled and ran before: a real error, not a missing compiler
                raise
            self._compile_failed(e)
            return self.unet_eps(self._prepare(x[:n]), t[:n])
        self._compile_state["ok"] = True
        return out[:n]

    # ---- features ----
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, abar from the model's own noise schedule."""
        return self.noise_scheduler.add_noise(x0, noise, t)

    def _capture_pass(self, x0: torch.Tensor, noise_seed: int) -> list[torch.Tensor]:
        """One UNet pass over all (image, timestep) pairs; features in the documented flat order."""
        N, T = x0.shape[0], len(self.timesteps)
        device = x0.device
        if self.config.get("share_noise"):  # DDPM-seg: one noise tensor for every timestep (salt -1: none other's)
            noise = seeded_randn([noise_seed], self.latent_shape, device, salt=-1).expand(T, *self.latent_shape)
        else:
            noise = torch.stack([seeded_randn([noise_seed], self.latent_shape, device, salt=1 + t)[0]
                                 for t in self.timesteps])  # [T, C, h, w], shared by every image
        t_all = torch.tensor(self.timesteps, device=device).repeat_interleave(N)  # [T*N] (t-major)
        x_all = x0.repeat(T, 1, 1, 1)  # [T*N, C, h, w]
        noisy = self.add_noise(x_all, noise.repeat_interleave(N, dim=0), t_all)

        captured: dict[int, list[torch.Tensor]] = {i: [] for i in self.layers}
        hooks = [self._hook_level(i, captured[i]) for i in self.layers]
        try:
            with self._autocast(device):
                for start in range(0, T * N, self.max_batch):
                    self.unet_eps(self._prepare(noisy[start:start + self.max_batch]), t_all[start:start + self.max_batch])
        finally:
            for h in hooks:
                h.remove()
        features = []
        for i in self.layers:
            per_t = torch.cat(captured[i]).reshape(T, N, *captured[i][0].shape[1:])  # [T, N, C_i, h_i, w_i]
            features += [per_t[ti].contiguous(memory_format=torch.contiguous_format) for ti in range(T)]
        return features

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        H, W = self.resolution
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (H, W):
            raise LabelgenError(f"{self.backend}: images must be [N, 3, {H}, {W}] in [-1, 1], "
                                f"got {list(images.shape)}")
        return images.to(module_device(self), torch.float32)

    @inference
    def features_of_images(self, images: torch.Tensor, seed: int | None = None) -> list[torch.Tensor]:
        x0 = self.encode(self._check_images(images))
        return self._capture_pass(x0, int(self.config.get("noise_seed", 0) if seed is None else seed))

    # ---- sampling ----
    def _ddim_sampler(self, steps: int, device: torch.device) -> tuple[torch.Tensor, Callable]:
        """(timesteps, high to low; ``step(eps, t, x)`` -> x at the next timestep): diffusers' DDIMScheduler at
        eta 0, the library the diffusers-trained models were made with (ADM overrides it with guided-diffusion's)."""
        from diffusers import DDIMScheduler

        if steps < 1 or steps > self.noise_scheduler.config.num_train_timesteps:
            raise LabelgenError(f"{self.backend}: ddim_steps must be in 1..{self.noise_scheduler.config.num_train_timesteps}")
        scheduler = DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        return scheduler.timesteps, lambda eps, t, x: scheduler.step(eps, t, x, eta=0.0).prev_sample

    def _ddim(self, seeds: list[int], steps: int) -> torch.Tensor:
        device = module_device(self)
        timesteps, step = self._ddim_sampler(steps, device)
        x = seeded_randn(seeds, self.latent_shape, device)  # x_T [N, C, h, w] (DDIM's initial noise sigma is 1)
        with self._autocast(device):
            for t in timesteps:
                out = torch.cat([self._sample_eps(x[s:s + self.max_batch],
                                                  t.expand(min(self.max_batch, x.shape[0] - s)).to(device)).float()
                                 for s in range(0, x.shape[0], self.max_batch)])  # [N, C, h, w]
                x = step(out, t, x)
        return x

    @inference
    def _run(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        seeds = check_seeds([r["seed"] for r in recipes])
        steps = [int(r.get("ddim_steps") or self.config["ddim_steps"]) for r in recipes]
        images = [None] * len(recipes)
        for n in sorted(set(steps)):  # one DDIM run per distinct step count
            idx = [k for k, s in enumerate(steps) if s == n]
            decoded = self.decode(self._ddim([seeds[k] for k in idx], n)).clamp(-1, 1).float()
            for j, k in enumerate(idx):
                images[k] = decoded[j]
        images = quantize(torch.stack(images))  # the pixels a saved PNG holds: features of a sample = of its file
        features = self._capture_pass(self.encode(images), int(self.config.get("noise_seed", 0)))
        return GeneratorOutput(images, features, [{"seed": s, "ddim_steps": n} for s, n in zip(seeds, steps)])

    def sample(self, seeds: list[int], ddim_steps: int | None = None, **options) -> GeneratorOutput:
        if options:
            raise LabelgenError(f"{self.backend}: unknown sampling options {sorted(options)} (it takes ddim_steps)")
        return self._run([{"seed": s, "ddim_steps": ddim_steps} for s in check_seeds(seeds)])

    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        for r in recipes:
            if "seed" not in r:
                raise LabelgenError(f"{self.backend}: recipe {r!r} has no seed (real images: use features_of_images)")
        return self._run(list(recipes))


class PixelDiffusionGenerator(DiffusionGenerator):
    """A diffusion backend that denoises RGB pixels directly (DDPM, ADM): the UNet's space is the image."""

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (3, *self.resolution)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return x0

"""GAN inversion: project real photos into a GAN's latent space, so GAN teachers label real photos too.

    result = invert(generator, images, InversionConfig(steps=300))   # images: float [N, 3, H, W] in [-1, 1]
    result.recipes[k]   # the latent recipe that recomputes image k's features (Teacher.features(recipes=...))
    result.psnr[k]      # dB: the image the *stored* recipe makes vs the target (both on uint8 levels)

Latent optimisation (no encoder network, nothing downloaded). The loss is

    pixel MSE  +  lap_weight * Laplacian-pyramid L1  [+ noise_weight * noise regulariser (StyleGAN2)]

The Laplacian-pyramid L1 ("Lap1", Bojanowski et al. 2018, *Optimizing the latent space of generative
networks*) is the perceptual term: it compares band-pass detail at every scale, so edges and textures
count as much as flat colour, and it needs no pretrained network (the published checkpoints we load
carry no discriminator).

* ``dcgan`` -> recipe ``{"z": [nz]}``: ``restarts`` starts per image (each the closest of 16 draws
  z ~ N(0, I)) are optimised for the first sixth of ``steps``; the best continues for the rest (Adam, cosine
  learning rate).
* ``stylegan2`` -> recipe ``{"w": [num_ws][w_dim], "noise": {layer: base64 float16 [R, R]}, "noise_mode":
  "const"}``: for 3/4 of the steps one w per image, from the mean W (mapped from 4,096 draws) and jittered by
  Gaussian noise that decays to 0 (the NVlabs projector's schedule), with the generator's constant noise; then
  W+ (a w per layer) and the per-layer noise maps together. Noise maps keep their starting mean and spread
  (re-normalised after every step) and are regularised by their autocorrelation at all scales (Karras et al.
  2020, Appendix C), so they cannot encode the image by themselves. Optimising W+ from the start gets stuck
  far more often than W first.

:data:`INVERTERS` (backend -> method) is the one list of GANs that can be inverted; the workspace's
``import_images`` and ``labelgen import --steps`` use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from labelgen.errors import LabelgenError
from labelgen.imaging import quantize

W_AVG_SAMPLES = 4096  # z draws for the mean W and its spread (StyleGAN2)
DRAWS_PER_START = 16  # DCGAN: each random start is the best of this many z draws (forward passes only)


@dataclass
class InversionConfig:
    steps: int = 300  # optimisation steps per image (`labelgen import --steps`)
    lr: float = 0.1  # Adam learning rate (peak)
    lap_weight: float = 1.0  # Laplacian-pyramid L1 (the perceptual term)
    noise_weight: float = 1e5  # StyleGAN2 noise-map regulariser
    restarts: int = 8  # DCGAN: random starts per image
    batch_size: int = 8  # images optimised together
    seed: int = 0  # random starts / W noise


@dataclass
class Inversion:
    recipes: list[dict[str, Any]]  # per image: the backend recipe (JSON-able)
    images: torch.Tensor  # [N, 3, H, W] in [-1, 1]: what the stored recipes make
    psnr: list[float] = field(default_factory=list)  # per image, dB


# ---------------------------------------------------------------- losses
def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image of a, b [N, 3, H, W] in [-1, 1] (peak-to-peak 2, i.e. 255 on uint8 levels)."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-10))


def laplacian_l1(a: torch.Tensor, b: torch.Tensor, min_size: int = 4) -> torch.Tensor:
    """Laplacian-pyramid L1 per image of a, b [N, C, H, W]: sum over levels of the mean absolute difference of
    the band-pass images (level - its 2x2-average upsampled back), plus the coarsest level itself."""
    d = a - b  # the pyramid is linear: the difference's pyramid is the pyramid's difference
    total = d.new_zeros(d.shape[0])
    while min(d.shape[-2:]) >= 2 * min_size and d.shape[-2] % 2 == 0 and d.shape[-1] % 2 == 0:
        low = F.avg_pool2d(d, 2)  # [N, C, H/2, W/2]
        band = d - low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        total = total + band.abs().flatten(1).mean(1)
        d = low
    return total + d.abs().flatten(1).mean(1)


def reconstruction_loss(x: torch.Tensor, target: torch.Tensor, config: InversionConfig) -> torch.Tensor:
    """Per image [N]: pixel MSE + lap_weight * Laplacian-pyramid L1."""
    return (x - target).square().flatten(1).mean(1) + config.lap_weight * laplacian_l1(x, target)


def noise_regularizer(maps: list[torch.Tensor]) -> torch.Tensor:
    """Per image [N]: squared autocorrelation (1-pixel shifts, both axes) of each noise map [N, 1, R, R],
    at every scale down to 8x8 (Karras et al. 2020)."""
    total = maps[0].new_zeros(maps[0].shape[0])
    for v in maps:
        while True:
            total = total + (v * v.roll(1, dims=3)).mean((1, 2, 3)).square() \
                + (v * v.roll(1, dims=2)).mean((1, 2, 3)).square()
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, 2)
    return total


def _cosine(step: int, steps: int, lr: float) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))


# ---------------------------------------------------------------- DCGAN: z
def _optimise_z(generator, z0: torch.Tensor, target: torch.Tensor, steps: int, config: InversionConfig,
                tick: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on z [M, nz] towards target [M, 3, 64, 64]; returns (z, final loss [M])."""
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=config.lr)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _cosine(step, steps, config.lr)
        image, _ = generator.synthesize(z)
        loss = reconstruction_loss(image, target, config)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        tick(1)
    with torch.no_grad():
        image, _ = generator.synthesize(z)
        return z.detach(), reconstruction_loss(image, target, config)


def invert_dcgan(generator, target: torch.Tensor, config: InversionConfig, tick: Callable[[int], None]
                 ) -> list[dict[str, Any]]:
    """target [N, 3, 64, 64] -> recipes {"z": [nz]}: best of ``restarts`` random starts, then refined."""
    n, r = target.shape[0], max(1, config.restarts)
    search = max(1, config.steps // 6) if r > 1 else 0
    g = torch.Generator().manual_seed(config.seed)
    draws = torch.randn(n, DRAWS_PER_START * r, generator.nz, generator=g).to(target.device)  # [N, D*R, nz]
    with torch.no_grad():  # the starts: per image the R draws (of D*R) whose images are closest already
        losses = torch.stack([reconstruction_loss(generator.synthesize(draws[k])[0], target[k:k + 1], config)
                              for k in range(n)])  # [N, D*R]
    chosen = losses.topk(r, dim=1, largest=False).indices  # [N, R]
    z = draws[torch.arange(n, device=draws.device)[:, None], chosen].reshape(n * r, -1)  # [N*R, nz]
    if search:
        z, loss = _optimise_z(generator, z, target.repeat_interleave(r, 0), search, config, tick)
        best = loss.view(n, r).argmin(1)  # [N]
        z = z.view(n, r, -1)[torch.arange(n, device=z.device), best]  # [N, nz]
    z, _ = _optimise_z(generator, z, target, config.steps - search, config, tick)
    return [{"z": z[k].cpu().tolist()} for k in range(n)]


# ---------------------------------------------------------------- StyleGAN2: W+ and noise maps
def _w_statistics(generator, device) -> tuple[torch.Tensor, float]:
    """Mean W [w_dim] and the spread sqrt(E|w - mean|^2) of W_AVG_SAMPLES mapped draws (class: the
    generator's default class for conditional models)."""
    z = torch.randn(W_AVG_SAMPLES, generator.z_dim, generator=torch.Generator().manual_seed(123)).to(device)
    c = None
    if generator.c_dim > 0:
        idx = torch.full((W_AVG_SAMPLES,), int(generator.config.get("class_idx", 0)), device=device)
        c = F.one_hot(idx, generator.c_dim).float()
    w = generator.mapping(z, c)[:, 0]  # [S, w_dim] (psi 1: no truncation)
    mean = w.mean(0)
    return mean, float((w - mean).square().sum(1).mean().sqrt())


def _moments(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map mean and standard deviation of noise maps [N, 1, R, R] -> [N, 1, 1, 1] each."""
    mean = v.mean(dim=(2, 3), keepdim=True)
    return mean, (v - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()


def _renormalise_(maps: dict[str, torch.Tensor], moments: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Noise maps back to their starting mean and standard deviation (in place): optimisation may move their
    pattern, not their strength (the NVlabs projector renormalises to N(0, 1); the starting constant buffers are
    N(0, 1) draws, and keeping their exact moments lets stage 2 start where stage 1 ended)."""
    with torch.no_grad():
        for name, v in maps.items():
            mean, std = _moments(v)
            v.sub_(mean).mul_(moments[name][1] / std.clamp_min(1e-8)).add_(moments[name][0])


def _stylegan2_image(generator, ws: torch.Tensor, maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N, 3, R, R] with a straight-through clamp: saturated pixels keep a gradient (a plain clamp would
    stop any pixel that overshoots from ever coming back)."""
    raw, _ = generator.synthesis(ws, "const", None, maps)  # [N, img_channels, R, R], not clamped
    raw = raw.expand(-1, 3, -1, -1)
    return raw + (raw.clamp(-1, 1) - raw).detach()


def invert_stylegan2(generator, target: torch.Tensor, config: InversionConfig, tick: Callable[[int], None]
                     ) -> list[dict[str, Any]]:
    """target [N, 3, R, R] -> recipes {"w": W+, "noise": {layer: base64 float16}, "noise_mode": "const"}.

    Stage 1 (3/4 of the steps): one w per image [N, 1, w_dim] from the mean W, noise maps fixed at the
    generator's constant buffers, W jittered by Gaussian noise decaying to 0 (the NVlabs projector's schedule).
    Stage 2: W+ (a w per layer, from stage 1's) and the noise maps together, cosine learning rate from lr / 10,
    noise maps re-normalised after each step (:func:`_renormalise_`) and regularised. (W+ from the start gets stuck far more often.)"""
    n, device = target.shape[0], target.device
    w_avg, w_std = _w_statistics(generator, device)
    layers = generator.synthesis.noise_layers()
    maps = {name: layer.noise_const.detach()[None, None].repeat(n, 1, 1, 1) for name, layer in layers.items()}
    g = torch.Generator().manual_seed(config.seed)
    stage1 = max(1, int(config.steps * 0.75))
    w = w_avg[None, None].repeat(n, 1, 1).requires_grad_(True)  # [N, 1, w_dim]
    opt = torch.optim.Adam([w], lr=config.lr)
    for step in range(stage1):
        t = step / stage1
        w_noise = torch.randn(w.shape, generator=g).to(device) * (w_std * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2)
        for group in opt.param_groups:
            group["lr"] = _cosine(step, stage1, config.lr)
        image = _stylegan2_image(generator, (w + w_noise).expand(-1, generator.num_ws, -1), maps)
        loss = reconstruction_loss(image, target, config)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        tick(1)
    stage2 = config.steps - stage1
    w = w.detach().repeat(1, generator.num_ws, 1).requires_grad_(True)  # [N, num_ws, w_dim]
    maps = {name: v.clone().requires_grad_(True) for name, v in maps.items()}
    moments = {name: _moments(v.detach()) for name, v in maps.items()}
    opt = torch.optim.Adam([w, *maps.values()], lr=config.lr / 10)
    for step in range(stage2):
        for group in opt.param_groups:
            group["lr"] = _cosine(step, stage2, config.lr / 10)
        image = _stylegan2_image(generator, w, maps)
        loss = reconstruction_loss(image, target, config) + config.noise_weight * noise_regularizer(list(maps.values()))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        _renormalise_(maps, moments)
        tick(1)
    return [{"w": w[k].detach().cpu().tolist(), "noise_mode": "const",
             "noise": generator.encode_noise_maps({name: v[k, 0] for name, v in maps.items()})} for k in range(n)]


# backend -> method(generator, target [N, 3, H, W] in [-1, 1], config, tick) -> recipes
INVERTERS: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "dcgan": invert_dcgan,
    "stylegan2": invert_stylegan2,
}


def can_invert(backend: str) -> bool:
    return backend in INVERTERS


def invert(generator, images: torch.Tensor, config: InversionConfig | None = None, progress: bool = False
           ) -> Inversion:
    """Project images [N, 3, H, W] in [-1, 1] (the generator's resolution) into the generator's latent space.
    The PSNR is measured on what the returned recipes make through ``features_from_recipes`` (the path the
    teacher's features take), quantised to uint8 levels like the stored photo."""
    from labelgen.run import progress as progress_bar

    config = config or InversionConfig()
    method = INVERTERS.get(generator.backend)
    if method is None:
        raise LabelgenError(f"no inversion method for the {generator.backend} generator (there is one for "
                            f"{', '.join(INVERTERS)}); use a diffusion teacher for real photos")
    if config.steps < 1:
        raise LabelgenError(f"--steps must be at least 1, got {config.steps}")
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != tuple(generator.resolution):
        raise LabelgenError(f"inversion: images must be [N, 3, {generator.resolution[0]}, {generator.resolution[1]}], "
                            f"got {list(images.shape)}")
    device = next(generator.parameters()).device
    target = images.float().to(device)
    was_training = generator.training
    frozen = [(p, p.requires_grad) for p in generator.parameters()]
    generator.eval()
    for p, _ in frozen:
        p.requires_grad_(False)
    recipes: list[dict[str, Any]] = []
    try:
        with progress_bar(config.steps * len(target), desc="invert", unit="image-step", disable=not progress) as bar:
            for start in range(0, len(target), config.batch_size):
                batch = target[start:start + config.batch_size]
                with torch.enable_grad():
                    recipes += method(generator, batch, config, lambda k, b=len(batch): bar.update(k * b))
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        generator.train(was_training)
    made = generator.features_from_recipes(recipes).images  # [N, 3, H, W]
    made = quantize(made.to(device))
    return Inversion(recipes, made, [float(v) for v in psnr(made, quantize(target))])


def mean_psnr(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def invert_photo(generator, image: np.ndarray, config: InversionConfig | None = None) -> dict[str, Any]:
    """A real photo uint8 [H, W, 3] at the generator resolution -> the recipe entries an annotation stores:
    the latent recipe plus ``"inversion": {"steps", "psnr"}`` (provenance: the teacher ignores it)."""
    from labelgen.imaging import images_to_tensor

    config = config or InversionConfig()
    result = invert(generator, images_to_tensor(np.asarray(image, dtype=np.uint8)[None]), config, progress=True)
    return {**result.recipes[0], "inversion": {"steps": config.steps, "psnr": round(result.psnr[0], 2)}}

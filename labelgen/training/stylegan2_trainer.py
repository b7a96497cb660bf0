"""Train labelgen's StyleGAN2 (:mod:`labelgen.generators.stylegan2`) on a folder of unlabeled images.

    G      StyleGAN2Generator (NVlabs parameter names), random per-layer noise while training
    D      residual discriminator (fromrgb -> residual down blocks with skip 1x1 -> minibatch-std
           epilogue: conv 3x3, fc, out), equalised learning rate, FIR [1,3,3,1] downsampling
    loss   non-saturating logistic; lazy R1 on reals every ``r1_every`` D steps (weight x r1_every)
    aug    DiffAugment (colour, translation 1/8, cutout 1/2), applied to real and fake before D
    EMA    G_ema with the StyleGAN2-ADA half-life (10 kimg x batch/32, ramp-up 0.05), or ``ema``

StyleGAN2 makes square images whose side is a power of two: other data must be resized with
``resolution=(R, R)``. Output: ``OUT/generator_config.json`` + ``OUT/generator.safetensors``
(``G_ema.save_pretrained``, loadable by ``Generator.from_pretrained`` / the stylegan2 backend); the training
state (G, D, G_ema, both optimisers, step, RNG) in ``OUT/train/checkpoint.pt`` (the resume file of
labelgen.run); the log in ``OUT/train/log.csv`` (step, total, loss_d, loss_g, seconds) + ``OUT/train/tb/``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelgen.engine import EMA, Cadence, Engine, RunFolder, Tick
from labelgen.errors import LabelgenError
from labelgen.generators.stylegan2 import FullyConnectedLayer, StyleGAN2Generator, fir, make_filter
from labelgen.run import rng_state, seed_everything, set_rng_state
from labelgen.training.common import RunningMean, augment_batch, begin_training
from labelgen.training.init_from import init_source, load_stylegan2_init, load_weights, take_architecture

SG2_ARCH_DEFAULTS = {"init": None, "resolution": None, "max_channels": 256, "z_dim": 256, "mapping_layers": 4}


@dataclass
class StyleGAN2TrainConfig:
    init: str | None = None  # --init: a stylegan2 trainer's output folder to start from (labelgen.training.init_from)
    resolution: tuple[int, int] | None = None  # (R, R); None: the images' size (must be square)
    max_channels: int | None = None
    z_dim: int | None = None  # = w_dim
    mapping_layers: int | None = None
    batch_size: int = 16
    steps: int = 10000  # one D step + one G step each
    lr: float = 2e-3
    warmup: int = 0
    grad_clip: float = 0.0
    ema: float | None = None  # fixed EMA decay; None: ADA half-life schedule
    r1_gamma: float | None = None  # None: 0.0002 * R^2 / batch (StyleGAN2-ADA heuristic)
    r1_every: int = 16
    diffaug: bool = True
    sample_every: int = 1000
    num_samples: int = 16
    checkpoint_every: int = 500
    log_every: int = 50
    time_limit_min: float | None = None
    seed: int = 0
    device: str = "auto"


# ---------------------------------------------------------------- DiffAugment
def diff_augment(x: torch.Tensor, gen: torch.Generator, rank: int = 0, world: int = 1) -> torch.Tensor:
    """DiffAugment 'color,translation,cutout' (Zhao et al. 2020); differentiable in x, randomness from gen.
    ``x``: rows rank, rank + world, ... of a global batch (labelgen.engine.Engine.shard): the random numbers are
    drawn for the whole batch and these rows taken, so every rank augments its rows as one process would."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape):
        drawn = torch.rand((shape[0] * world, *shape[1:]), generator=gen, device=gen.device)
        return (drawn if world == 1 else drawn[rank::world]).to(dev)

    # colour: brightness, saturation, contrast
    x = x + (rand(n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean
    # translation by up to 1/8 of the size, zero fill
    sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
    ty = (rand(n) * (2 * sh + 1)).floor().long() - sh
    tx = (rand(n) * (2 * sw + 1)).floor().long() - sw
    yy = torch.arange(h, device=dev)[None, :, None] - ty[:, None, None]  # source row for each output row
    xx = torch.arange(w, device=dev)[None, None, :] - tx[:, None, None]
    valid = ((yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)).unsqueeze(1)
    idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(n, 1, h * w).expand(-1, x.shape[1], -1)
    x = x.reshape(n, x.shape[1], h * w).gather(2, idx).reshape(x.shape) * valid
    # cutout: one zeroed rectangle of half the size
    ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    cy = (rand(n) * (h + (1 - ch % 2))).floor().long()
    cx = (rand(n) * (w + (1 - cw % 2))).floor().long()
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    hole = ((ys >= (cy - ch // 2)[:, None, None]) & (ys < (cy - ch // 2 + ch)[:, None, None])
            & (xs >= (cx - cw // 2)[:, None, None]) & (xs < (cx - cw // 2 + cw)[:, None, None]))
    return x * (~hole).unsqueeze(1).to(x.dtype)


# ---------------------------------------------------------------- discriminator
class EqConv2d(nn.Module):
    """Equalised-learning-rate conv; ``down``: FIR [1,3,3,1] low-pass then stride 2."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True, activation: str = "lrelu", down: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin * k * k)
        self.activation, self.down, self.pad = activation, down, k // 2
        self.register_buffer("resample_filter", make_filter((1, 3, 3, 1)))

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = self.weight * self.gain
        if self.down:
            x = fir(x, self.resample_filter, (1, 2, 1, 2) if self.pad == 0 else (2, 2, 2, 2))
            x = F.conv2d(x, w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.pad)
        if self.bias is not None:
            x = x + self.bias.view(1, -1, 1, 1)
        if self.activation == "lrelu":
            x = F.leaky_relu(x, 0.2) * math.sqrt(2)
        return x * gain if gain != 1 else x


class DiscriminatorBlock(nn.Module):
    def __init__(self, cin: int, cout: int, first: bool, img_channels: int = 3):
        super().__init__()
        if first:
            self.fromrgb = EqConv2d(img_channels, cin, 1)
        self.conv0 = EqConv2d(cin, cin, 3)
        self.conv1 = EqConv2d(cin, cout, 3, down=True)
        self.skip = EqConv2d(cin, cout, 1, bias=False, activation="linear", down=True)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        if x is None:
            x = self.fromrgb(img)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return y + x


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator (NVlabs-like names: b{res}.fromrgb/conv0/conv1/skip, b4.*)."""

    def __init__(self, resolution: int, max_channels: int, channel_base: int | None = None, mbstd_group: int = 4):
        super().__init__()
        channel_base = channel_base or max_channels * 64
        ch = lambda r: min(channel_base // r, max_channels)  # noqa: E731
        self.resolutions = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]
        for i, r in enumerate(self.resolutions):
            setattr(self, f"b{r}", DiscriminatorBlock(ch(r), ch(r // 2), first=i == 0))
        c4 = ch(4)
        self.mbstd_group = mbstd_group
        self.b4 = nn.Module()
        if not self.resolutions:
            self.b4.fromrgb = EqConv2d(3, c4, 1)
        self.b4.conv = EqConv2d(c4 + 1, c4, 3)
        self.b4.fc = FullyConnectedLayer(c4 * 16, c4, activation="lrelu")
        self.b4.out = FullyConnectedLayer(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = None
        for r in self.resolutions:
            x = getattr(self, f"b{r}")(x, img)
        if x is None:
            x = self.b4.fromrgb(img)
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        while n % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean([1, 2, 3])  # [n/g]
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        x = self.b4.conv(torch.cat([x, y], dim=1))
        return self.b4.out(self.b4.fc(x.flatten(1))).squeeze(1)


# ---------------------------------------------------------------- training
def build_generator(run: dict[str, Any]) -> StyleGAN2Generator:
    r = run["resolution"][0]
    return StyleGAN2Generator(img_resolution=r, z_dim=run["z_dim"], w_dim=run["z_dim"],
                              mapping_kwargs={"num_layers": run["mapping_layers"]},
                              synthesis_kwargs={"channel_base": run["max_channels"] * 64,
                                                "channel_max": run["max_channels"]},
                              noise_mode="const")


def _seeds(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(0, 2**62, (n,), generator=gen, device=gen.device).tolist()


def train_stylegan2(engine: Engine, data: Path, folder: RunFolder, cfg: StyleGAN2TrainConfig,
                    explicit: set[str] | None = None) -> dict[str, Any]:
    """Train (or resume) a StyleGAN2 into ``folder`` (its one writer) on ``engine`` (one process, or one rank of a
    torchrun job: every rank draws the same global batch, latents, noise seeds and augmentation and computes its
    rows; see train_generator)."""
    out = folder.root
    echo = engine.echo
    requested = replace(cfg, init=init_source(cfg.init))  # its architecture settings: None where not given
    start = begin_training(engine, folder, "stylegan2", requested, SG2_ARCH_DEFAULTS, explicit, data)
    device, run, saved, cfg, images = start.device, start.run, start.saved, start.cfg, start.images
    run["resolution"] = tuple(run["resolution"] or images.shape[2:])
    h, w = run["resolution"]
    if h != w or h < 4 or h & (h - 1):
        raise LabelgenError(f"stylegan2 makes square images with a power-of-two side; the data is {h}x{w} "
                            "(HxW): pass --resolution RxR, e.g. 64x64")
    init_state = None
    if saved is None and run["init"]:  # a new run from --init: its architecture, G_ema and D
        arch, init_state = load_stylegan2_init(run["init"], run["resolution"])
        take_architecture(run, requested, arch)
    if cfg.batch_size < 2 or cfg.steps < 1:
        raise LabelgenError("stylegan2: --batch-size must be >= 2 and --steps positive")
    engine.check_batch(cfg.batch_size)
    gamma = cfg.r1_gamma if cfg.r1_gamma is not None else 0.0002 * h * h / cfg.batch_size

    gen = seed_everything(cfg.seed, device)  # G's and D's initial weights, then every batch, latent, noise and augmentation
    G = build_generator(run)
    D = Discriminator(h, run["max_channels"])
    c_reg = cfg.r1_every / (cfg.r1_every + 1)  # lazy-regularisation correction of D's Adam
    opt_g = engine.optimizer(torch.optim.Adam, G.parameters(), lr=cfg.lr, betas=(0.0, 0.99), eps=1e-8)
    opt_d = engine.optimizer(torch.optim.Adam, D.parameters(), lr=cfg.lr * c_reg, betas=(0.0, 0.99 ** c_reg),
                             eps=1e-8)
    step, prior = 0, 0.0
    if saved is not None:
        G.load_state_dict(saved["G"])
        D.load_state_dict(saved["D"])
    elif init_state is not None:  # G and its EMA (the copy below) start from the init's G_ema
        load_weights(G, init_state["G"], run["init"], "stylegan2 G")
        load_weights(D, init_state["D"], run["init"], "stylegan2 D")
    G.to(device)
    D.to(device)
    ema = EMA(G, 0.0)
    if saved is not None:
        ema.shadow.load_state_dict(saved["G_ema"])
        engine.load_optimizer(opt_g, saved["opt_g"])
        engine.load_optimizer(opt_d, saved["opt_d"])
        step, prior = int(saved["step"]), float(saved.get("seconds", 0.0))
        set_rng_state(saved["rng"][0], gen)
        echo(f"resuming {out} from step {step}")
    images = images.to(device)
    n_g = sum(p.numel() for p in G.parameters())
    started = f" from {run['init']}" if run["init"] else ""
    echo(f"stylegan2: {len(images)} images {h}x{w}, G {n_g / 1e6:.2f} M / D {sum(p.numel() for p in D.parameters()) / 1e6:.2f} M "
         f"params{started}, batch {cfg.batch_size}, R1 gamma {gamma:g}, steps {step}->{cfg.steps}, device {device}"
         f"{f', {engine.world} torchrun processes' if engine.world > 1 else ''}")
    aug = (lambda x: diff_augment(x, gen, engine.rank, engine.world)) if cfg.diffaug else (lambda x: x)

    def fake_images(n: int) -> torch.Tensor:
        """This rank's rows of ``n`` (the global batch) generated images."""
        z = engine.shard(torch.randn((n, run["z_dim"]), generator=gen, device=device))
        seeds = engine.shard(_seeds(gen, n))
        ws = G.mapping(z, None, update_w_avg=True)
        G.mapping.w_avg.copy_(engine.mean(G.mapping.w_avg))  # the moving average of w over the global batch
        img, _ = G.synthesis(ws, noise_mode="random", noise_seeds=seeds)
        return img

    def checkpoint(done: int) -> None:
        cpu = lambda m: {k: v.detach().cpu() for k, v in m.state_dict().items()}  # noqa: E731
        if engine.is_main:
            folder.save_resume("stylegan2", done, {
                "config": {**run, "resolution": list(run["resolution"])},
                "G": cpu(G), "D": cpu(D), "G_ema": cpu(ema.shadow), "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(), "rng": [rng_state(gen)], "seconds": prior + engine.elapsed})
        folder.export(ema.shadow)

    def sample_grid(tick: Tick) -> None:
        folder.grid(tick.step, ema.shadow.sample(list(range(cfg.num_samples))).images)

    def optimise(opt, model, loss, lr):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        engine.average_gradients(model.parameters())
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for g in opt.param_groups:
            g["lr"] = lr * (c_reg if opt is opt_d else 1.0)
        opt.step()

    def train_one(k: int) -> None:
        """Step k (0-based): one D step, one G step, the EMA."""
        lr = cfg.lr * min(1.0, (k + 1) / max(1, cfg.warmup)) if cfg.warmup else cfg.lr
        # D: logistic loss on augmented real vs fake (+ lazy R1 on reals)
        G.requires_grad_(False)
        D.requires_grad_(True)
        real = engine.shard(augment_batch(images, torch.randint(0, len(images), (cfg.batch_size,), generator=gen,
                                                                device=device), gen))
        with torch.no_grad():
            fake = fake_images(cfg.batch_size)
        loss_d = F.softplus(D(aug(fake))).mean() + F.softplus(-D(aug(real))).mean()
        if cfg.r1_every and k % cfg.r1_every == 0 and gamma > 0:
            real_r = real.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(D(aug(real_r)).sum(), real_r, create_graph=True)
            loss_d = loss_d + grad.square().sum([1, 2, 3]).mean() * (gamma / 2) * cfg.r1_every
        optimise(opt_d, D, loss_d, lr)
        # G: non-saturating loss
        G.requires_grad_(True)
        D.requires_grad_(False)
        loss_g = F.softplus(-D(aug(fake_images(cfg.batch_size)))).mean()
        optimise(opt_g, G, loss_g, lr)
        loss_d, loss_g = engine.mean(loss_d), engine.mean(loss_g)  # over the global batch
        if not (torch.isfinite(loss_d) and torch.isfinite(loss_g)):
            raise LabelgenError(f"stylegan2: loss became non-finite at step {k}; lower --lr")
        # EMA
        if cfg.ema is not None:
            ema.decay = cfg.ema
        else:
            ema_nimg = min(10_000 * cfg.batch_size / 32, (k + 1) * cfg.batch_size * 0.05)
            ema.decay = 0.5 ** (cfg.batch_size / max(ema_nimg, 1e-8))
        ema.update(G, 10**9)  # warm-up handled by the schedule above
        d_losses.add(loss_d.item())
        g_losses.add(loss_g.item())
        if bar is not None and (k + 1) % 10 == 0:
            bar.set_postfix(loss_d=f"{d_losses.mean:.3f}", loss_g=f"{g_losses.mean:.3f}", refresh=False)

    def log_row(tick: Tick):
        return ({"loss_d": round(d_losses.mean, 5), "loss_g": round(g_losses.mean, 5),
                 "seconds": round(prior + tick.seconds, 1)},
                {"train/loss_d": d_losses.mean, "train/loss_g": g_losses.mean})

    d_losses, g_losses = RunningMean(), RunningMean()
    with engine.watch(cfg.time_limit_min):
        # after the signal handlers are in place (OUT/train/ appearing tells tests the run is under way)
        run_log = folder.open_log(("loss_d", "loss_g", "seconds"), cfg.steps, resume_step=step)
        bar = engine.progress(cfg.steps, step, "train stylegan2") if step < cfg.steps else None
        result = engine.fit(train_one, step, cfg.steps,
                            Cadence(log=cfg.log_every, sample=cfg.sample_every, checkpoint=cfg.checkpoint_every),
                            log=run_log, bar=bar, on_sample=sample_grid, on_log=log_row,
                            on_checkpoint=lambda tick: checkpoint(tick.step))
        step, stopped = result.step, result.stopped
        if bar is not None:
            bar.close()
        if step >= cfg.steps and not (out / "generator.safetensors").is_file():
            checkpoint(step)
        seconds = prior + engine.elapsed
    folder.close_log()
    summary = {"step": step, "steps": cfg.steps, "loss_d": d_losses.mean if d_losses.values else None,
               "loss_g": g_losses.mean if g_losses.values else None, "loss": g_losses.mean if g_losses.values else None,
               "seconds": seconds, "stopped": stopped, "out": str(out), "params": n_g}
    if stopped:
        echo(f"stopped at step {step}/{cfg.steps} ({stopped}); checkpoint saved; run the same command to continue")
    else:
        echo(f"done: step {step}, D loss {summary['loss_d'] or float('nan'):.3f}, G loss "
             f"{summary['loss_g'] or float('nan'):.3f}, {summary['seconds'] / 60:.1f} min in total -> {out}")
    return summary

"""Train a generator on a folder of unlabeled images of the target domain.

DDPM (``backend="ddpm"``): a diffusers ``UNet2DModel`` with a 1000-step DDPM schedule (linear or
cosine betas), epsilon prediction, MSE loss, AdamW with linear warm-up, gradient clipping, an EMA
copy, random horizontal flips; bf16 autocast + channels_last on GPU only. The whole data set lives
on the training device as one uint8 tensor and batches are drawn and flipped there (no loader). On
CUDA the UNet is compiled (``compile``: "auto" = on for CUDA only; a model that fails to compile falls
back to eager with one warning) and the loss is read back to the host only every ``log_every`` steps (and
before any checkpoint or sample grid), so the GPU never waits on the Python loop; on CPU the loop is eager
and checks the loss every step. AdamW is the fused kernel on both (the engine's fused-optimiser rule). All
training randomness (batch indices, flips, noise, timesteps)
comes from one ``torch.Generator`` whose state is checkpointed, so a resumed run continues exactly
where an uninterrupted one would have been.

Both trainers run on the training engine (:mod:`labelgen.engine`), also under ``torchrun --nproc-per-node
K -m labelgen.cli -- train-generator ...``: every rank draws the same global batch (indices, flips, noise,
timesteps) from the same seeded generator and computes its rows (``--batch-size`` divisible by K); the
gradients are averaged over the ranks before clipping, so K processes follow the loss curve of one process
(within float rounding). The loop is the engine's (``Engine.fit``: the step function draws, computes and
optimises; the engine calls the log, sample grid, probe and checkpoint on their cadence and stops); rank 0 holds
OUT's lock and writes the checkpoint, the log, the grids and the export through OUT's one writer
(``labelgen.engine.RunFolder``); a run may be resumed with another K.

Output folder::

    OUT/model_index.json  OUT/unet/  OUT/scheduler/    diffusers DDPMPipeline layout, EMA weights
    OUT/train/checkpoint.pt                            model, EMA, optimizer, step, RNG (resume file, labelgen.run)
    OUT/train/log.csv  OUT/train/tb/                   loss log (step, total, loss, lr, seconds) + TensorBoard
    OUT/train/samples/step_*.png                       DDIM sample grids

Running the same command again resumes from ``OUT/train/checkpoint.pt`` (``--steps`` may be raised);
``time_limit_min`` stops gracefully with a checkpoint and a loadable export. OUT is locked while a
run writes to it (``train_generator``).
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from labelgen.engine import EMA, Cadence, Engine, RunFolder, Tick
from labelgen.errors import LabelgenError
from labelgen.run import rng_state, seed_everything, set_rng_state
from labelgen.training.common import (RunningMean, augment_batch, begin_training, check_divisible, replace_dir,
                                      run_folder)
from labelgen.training.init_from import (Denoiser, DiffusersDenoiser, init_source, load_ddpm_init, load_weights,
                                         model_eps, take_architecture)

DDPM_ARCH_DEFAULTS = {"init": None, "resolution": None, "channels": (32, 64, 128, 128), "layers_per_block": 1, "attention": True,
                      "beta_schedule": "linear", "num_train_timesteps": 1000}


@dataclass
class DDPMTrainConfig:
    # architecture / schedule (fixed for a run; checked on resume). None = the resumed run's value,
    # else DDPM_ARCH_DEFAULTS (resolution: the images' size), or the init's (labelgen.training.init_from)
    init: str | None = None  # --init: the generator the run starts from ("default" or a path); None: from noise
    resolution: tuple[int, int] | None = None  # (H, W)
    channels: tuple[int, ...] | None = None
    layers_per_block: int | None = None
    attention: bool | None = None  # self-attention in the UNet's mid block (lowest resolution only)
    beta_schedule: str | None = None  # "linear" | "cosine"
    num_train_timesteps: int | None = None
    # optimisation (may change between resumes)
    batch_size: int = 16
    steps: int = 10000
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999
    # bookkeeping
    sample_every: int = 1000
    sample_steps: int = 25  # DDIM steps for the grids
    num_samples: int = 16
    checkpoint_every: int = 500
    export_fp16: bool = False  # UNet weights of the export in float16
    log_every: int = 50
    time_limit_min: float | None = None
    seed: int = 0
    device: str = "auto"
    compile: str = "auto"  # torch.compile the UNet: "auto" (on for CUDA), "on", "off"; eager fallback on failure
    annotations: str | None = None  # --annotations W: probe the EMA's features on W's annotated photos (quality.Probe)
    probe_every_min: float = 10.0  # minutes between probes (and one at the end)


COMPILE_CHOICES = ("auto", "on", "off")


def build_unet(cfg: dict[str, Any]):
    from diffusers import UNet2DModel

    channels = tuple(cfg["channels"])
    n = len(channels)
    groups = math.gcd(*channels) if n > 1 else channels[0]
    groups = max(g for g in range(1, min(32, groups) + 1) if groups % g == 0)
    return UNet2DModel(
        sample_size=list(cfg["resolution"]),
        in_channels=3,
        out_channels=3,
        block_out_channels=channels,
        layers_per_block=cfg["layers_per_block"],
        down_block_types=("DownBlock2D",) * n,
        up_block_types=("UpBlock2D",) * n,
        add_attention=bool(cfg["attention"]),
        attention_head_dim=min(channels[-1], 32),
        norm_num_groups=groups,
    )


def build_scheduler(cfg: dict[str, Any]):
    from diffusers import DDPMScheduler

    betas = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
    if cfg["beta_schedule"] not in betas:
        raise LabelgenError(f"unknown beta schedule {cfg['beta_schedule']!r} (linear or cosine)")
    return DDPMScheduler(num_train_timesteps=cfg["num_train_timesteps"], beta_schedule=betas[cfg["beta_schedule"]],
                         prediction_type="epsilon", clip_sample=True)


@torch.no_grad()
def ddim_sample(unet, scheduler, n: int, steps: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` images [-1, 1] with a few DDIM steps (eta 0) from the DDPM schedule of ``scheduler``."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_config(scheduler.config)
    ddim.set_timesteps(steps)
    h, w = unet.config.sample_size if not isinstance(unet.config.sample_size, int) else (unet.config.sample_size,) * 2
    gen = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn((n, 3, h, w), generator=gen).to(device)
    dtype = next(unet.parameters()).dtype
    for t in ddim.timesteps:
        eps = unet(x.to(dtype), t.to(device)).sample.float()
        x = ddim.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)


def wants_compile(setting: str, device: torch.device) -> bool:
    """``compile`` setting -> compile or not ("auto": on CUDA only)."""
    if setting not in COMPILE_CHOICES:
        raise LabelgenError(f"--compile {setting!r}: one of {', '.join(COMPILE_CHOICES)}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


class TrainStep:
    """Forward + epsilon MSE + backward of one DDPM step, through ``torch.compile(model)`` when asked.

    Compilation happens lazily at the first call (and its backward); if it fails, the step is run again
    eagerly on the same inputs, one warning says why, and the run stays eager. ``compiled`` shares the
    model's parameters, so the optimiser, EMA and checkpoints see one set of weights."""

    def __init__(self, model: torch.nn.Module, compile: bool):
        self.model = model
        self.compiled = None
        if compile:
            try:
                self.compiled = torch.compile(model, dynamic=False)  # static shapes: one batch size, one resolution
            except Exception as e:  # e.g. a Python or platform torch.compile does not support
                self._fall_back(e)

    def _fall_back(self, error: Exception) -> None:
        import warnings

        self.compiled = None
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"train-generator: torch.compile failed ({type(error).__name__}: {first_line}); "
                      f"training the UNet eagerly", RuntimeWarning, stacklevel=2)

    def __call__(self, xt: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, autocast) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self._run(self.compiled, xt, t, noise, autocast)
            except Exception as e:  # a compiler error (inductor, triton, C++ toolchain), at forward or backward
                self._fall_back(e)
                for p in self.model.parameters():
                    p.grad = None
        return self._run(self.model, xt, t, noise, autocast)

    @staticmethod
    def _run(model, xt, t, noise, autocast) -> torch.Tensor:
        with autocast:
            pred = model_eps(model(xt, t))
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        return loss


def export_pipeline(unet, scheduler, out: Path, fp16: bool = False) -> None:
    """Write OUT/model_index.json, OUT/unet/, OUT/scheduler/ (DDPMPipeline layout) atomically per part.

    ``fp16``: store the UNet weights as float16 (half the size; diffusers and the ddpm backend load
    them back into a float32 model)."""
    from diffusers import DDPMPipeline

    tmp = out / ".export.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    unet_cpu = unet
    if fp16 or next(unet.parameters()).device.type != "cpu" or next(unet.parameters()).dtype != torch.float32:
        import copy

        unet_cpu = copy.deepcopy(unet).to("cpu", torch.float16 if fp16 else torch.float32)
    unet_cpu = unet_cpu.to(memory_format=torch.contiguous_format)
    DDPMPipeline(unet=unet_cpu, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
    for part in ("unet", "scheduler"):
        replace_dir(tmp / part, out / part)
    (tmp / "model_index.json").replace(out / "model_index.json")
    shutil.rmtree(tmp, ignore_errors=True)
    # labelgen's marker (backend name; feature options stay the ddpm backend's defaults), so that
    # labelgen.generators.Generator.from_pretrained(OUT) works as well as from_checkpoint("ddpm", OUT)
    from labelgen.data.io import atomic_write_json
    from labelgen.generators.base import CONFIG_NAME

    if not (out / CONFIG_NAME).is_file():
        atomic_write_json(out / CONFIG_NAME, {"backend": "ddpm"})


def _network(run: dict[str, Any], requested: DDPMTrainConfig, saved: dict[str, Any] | None
             ) -> tuple[Denoiser | None, dict[str, torch.Tensor] | None]:
    """(the network, the init's weights) of a run that does not train the trainer's own UNet from noise: a resumed
    init run's (its checkpoint's "net"; its weights are the checkpoint's), or a new run's --init, whose architecture
    settings go into ``run`` (one given explicitly that differs is refused). (None, None): from noise."""
    if saved is not None:
        spec = saved["config"].get("net")
        return (None if spec is None else Denoiser.from_spec(spec)), None
    if run["init"] is None:
        return None, None
    denoiser, state = load_ddpm_init(run["init"], run["resolution"])
    take_architecture(run, requested, denoiser.arch())
    return denoiser, state


def train_ddpm(engine: Engine, data: Path, folder: RunFolder, cfg: DDPMTrainConfig,
               explicit: set[str] | None = None) -> dict[str, Any]:
    """Train (or resume) a DDPM on the images in ``data`` into ``folder`` (its one writer) on ``engine`` (one
    process, or one rank of a torchrun job: every rank draws the same global batch and computes its rows); returns
    a summary dict. ``explicit``: the settings the caller gave (the others are taken from a resumed run; see
    ``start_or_resume``)."""
    out = folder.root
    echo = engine.echo
    requested = replace(cfg, init=init_source(cfg.init))  # its architecture settings: None where not given
    start = begin_training(engine, folder, "ddpm", requested, DDPM_ARCH_DEFAULTS, explicit, data)
    device, run, saved_state, cfg, images = start.device, start.run, start.saved, start.cfg, start.images
    data_res = tuple(images.shape[2:])
    if run["resolution"] is None:
        run["resolution"] = data_res
    run["resolution"] = tuple(run["resolution"])
    denoiser, init_state = _network(run, requested, saved_state)
    check_divisible(run["resolution"], 2 ** (len(run["channels"]) - 1),
                    f"the UNet downsamples {len(run['channels']) - 1} times")
    if cfg.batch_size < 1 or cfg.steps < 1:
        raise LabelgenError("--batch-size and --steps must be positive")
    engine.check_batch(cfg.batch_size)

    gen = seed_everything(cfg.seed, device)  # the UNet's initial weights, then every batch, flip, noise and timestep
    if denoiser is None:  # from noise: the trainer's own UNet
        unet, scheduler = build_unet(run), build_scheduler(run)
        denoiser = DiffusersDenoiser.of(unet, scheduler)
    else:
        unet = denoiser.build()
        if init_state is not None:  # a new run from --init: its weights (the EMA starts from them too)
            load_weights(unet, init_state, run["init"], f"{denoiser.kind} UNet at {run['resolution'][0]}x"
                                                        f"{run['resolution'][1]}")
    fused = engine.fused
    opt = engine.optimizer(torch.optim.AdamW, unet.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                           weight_decay=cfg.weight_decay)
    step = 0
    prior_seconds = 0.0
    if saved_state is not None:
        unet.load_state_dict(saved_state["model"])
    unet.to(device)
    ema = EMA(unet, cfg.ema)
    if saved_state is not None:
        ema.shadow.load_state_dict(saved_state["ema"])
        engine.load_optimizer(opt, saved_state["optimizer"])
        step = int(saved_state["step"])
        prior_seconds = float(saved_state.get("seconds", 0.0))
        set_rng_state(saved_state["rng"][0], gen)
        echo(f"resuming {out} from step {step}")
    engine.channels_last(unet)
    engine.channels_last(ema.shadow)
    images = images.to(device)  # uint8 [N, 3, H, W] on the device: batches are drawn and flipped there
    train_step = TrainStep(unet, wants_compile(cfg.compile, device))
    sync_every_step = not engine.cuda  # CUDA: the loss comes back to the host only when it is needed
    alphas_cumprod = denoiser.alphas_cumprod().to(device)
    n_params = sum(p.numel() for p in unet.parameters())
    started = f", from {run['init']}" if run["init"] else ""
    echo(f"ddpm: {len(images)} images {run['resolution'][0]}x{run['resolution'][1]}, UNet {list(run['channels'])} "
         f"({n_params / 1e6:.2f} M params{started}), batch {cfg.batch_size}, steps {step}->{cfg.steps}, device {device}"
         f"{', compiled' if train_step.compiled is not None else ''}{', fused AdamW' if fused else ''}"
         f"{f', {engine.world} torchrun processes' if engine.world > 1 else ''}")

    pending: list[torch.Tensor] = []  # losses of the steps not yet read back (0-d tensors on the device)

    def read_losses(done: int) -> None:
        """Read the pending losses (their mean over the ranks) back to the host (one sync); a non-finite one
        stops the run. ``done``: the steps taken, the pending ones included."""
        if not pending:
            return
        values = engine.mean(torch.stack(pending)).tolist()
        first = done - len(pending)  # the step index of pending[0]
        pending.clear()
        for k, value in enumerate(values):
            if not math.isfinite(value):
                raise LabelgenError(f"loss became {value} at step {first + k}; lower --lr or check the data")
            losses.add(value)

    def show_loss(lr: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{losses.mean:.4f}", lr=f"{lr:.1e}", refresh=False)

    def checkpoint(done: int) -> None:
        read_losses(done)
        folder.save_resume("ddpm", done, {
            "config": {**run, "resolution": list(run["resolution"]), "channels": list(run["channels"]),
                       **({"net": denoiser.spec} if run["init"] else {})},
            "model": {k: v.detach().cpu() for k, v in unet.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in ema.shadow.state_dict().items()},
            "optimizer": opt.state_dict(), "rng": [rng_state(gen)], "seconds": prior_seconds + engine.elapsed})
        export()

    def export() -> None:
        folder.export(lambda root: denoiser.export(ema.shadow, root, fp16=cfg.export_fp16))

    def sample_grid(done: int) -> None:
        folder.grid(done, denoiser.grid(ema.shadow, cfg.num_samples, cfg.sample_steps, cfg.seed, device))

    probe = None  # --annotations: the k-fold mIoU of the EMA's features (labelgen.quality.Probe), rank 0
    if cfg.annotations and engine.is_main:
        from labelgen.quality import Probe

        probe = Probe(cfg.annotations, run["resolution"], cfg.probe_every_min, echo)
    probed: dict[int, float] = {}  # step -> the probe's mIoU, this session

    def run_probe(done: int) -> float:
        probed[done] = probe.run(denoiser.generator(ema.shadow, timesteps=probe.timesteps), done, engine.elapsed)
        return probed[done]

    def train_one(k: int) -> dict[str, Any]:
        """Step k (0-based): the global batch, drawn alike on every rank; each rank computes its rows (engine.shard)."""
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen, device=device)
        x0 = augment_batch(images, idx, gen)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        t = torch.randint(0, run["num_train_timesteps"], (cfg.batch_size,), generator=gen, device=device)
        x0, noise, t = engine.shard(x0), engine.shard(noise), engine.shard(t)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = engine.channels_last(a.sqrt() * x0 + (1 - a).sqrt() * noise)
        opt.zero_grad(set_to_none=True)
        loss = train_step(xt, t, noise, autocast)  # forward + backward
        pending.append(loss.detach())
        if sync_every_step:
            read_losses(k + 1)  # before the optimiser step: a non-finite loss never reaches the weights
        engine.average_gradients(unet.parameters())
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        lr = cfg.lr * min(1.0, (k + 1) / max(1, cfg.warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        ema.update(unet, k)
        if (k + 1) % 10 == 0 and not pending:
            show_loss(lr)
        return {"lr": lr}

    def probe_row(tick: Tick) -> dict[str, Any]:
        return {"probe_miou": round(run_probe(tick.step), 5)}  # (rank 0 only: not a decision the ranks share)

    def log_row(tick: Tick):
        if tick.log:  # every rank: the pending losses come back (their mean over the ranks)
            read_losses(tick.step)
            if tick.step % 10 == 0:
                show_loss(tick.values["lr"])
        lr = tick.values["lr"]
        row = {"loss": round(losses.mean, 5), "lr": lr, "seconds": round(prior_seconds + tick.seconds, 1)}
        scalars = {"train/loss": losses.mean, "train/lr": lr}
        if tick.validated:
            row.update(tick.validated)
            scalars["probe/miou"] = probed[tick.step]
        return row, scalars

    autocast = engine.autocast()
    losses = RunningMean()
    unet.train()
    cadence = Cadence(log=cfg.log_every, sample=cfg.sample_every, checkpoint=cfg.checkpoint_every,
                      validate=lambda tick: bool(tick.stopped or tick.last or probe.due(engine.elapsed)),
                      at_end=("log", "sample", "checkpoint"))
    with engine.watch(cfg.time_limit_min):
        # after the signal handlers are in place (OUT/train/ appearing tells tests the run is under way)
        run_log = folder.open_log(("loss", "lr", "seconds", "probe_miou"), cfg.steps, resume_step=step)
        done_before = step >= cfg.steps
        if done_before:
            echo(f"already trained to step {step} (>= --steps {cfg.steps}); re-exporting")
        elif probe is not None and step == 0 and run["init"]:  # what fine-tuning starts from
            run_log.row(0, {"probe_miou": round(run_probe(0), 5)}, scalars={"probe/miou": probed[0]})
        bar = engine.progress(cfg.steps, step, "train ddpm") if step < cfg.steps else None
        result = engine.fit(train_one, step, cfg.steps, cadence, log=run_log, bar=bar,
                            on_sample=lambda tick: sample_grid(tick.step),
                            on_validate=probe_row if probe is not None else None, on_log=log_row,
                            on_checkpoint=lambda tick: checkpoint(tick.step), agree_every_step=sync_every_step)
        step, stopped = result.step, result.stopped
        read_losses(step)
        if bar is not None:
            bar.close()
        if done_before:  # export only: the checkpoint keeps the run's own record
            export()
            if engine.is_main and cfg.sample_every and step % cfg.sample_every:
                sample_grid(step)
        elif step >= cfg.steps and not denoiser.exported(out):
            checkpoint(step)
        seconds = prior_seconds + engine.elapsed
    folder.close_log()
    summary = {"step": step, "steps": cfg.steps, "loss": losses.mean if losses.values else None,
               "seconds": seconds, "stopped": stopped, "out": str(out), "params": n_params,
               "probe_miou": probed.get(step), "probe_baseline": probe.baseline if probe is not None else None}
    if stopped:
        echo(f"stopped at step {step}/{cfg.steps} ({stopped}); checkpoint saved; run the same command to continue")
    elif done_before:
        echo(f"re-exported step {step} -> {out}")
    else:
        echo(f"done: step {step}, loss {summary['loss'] if summary['loss'] is not None else float('nan'):.4f}, "
             f"{summary['seconds'] / 60:.1f} min in total -> {out}")
    return summary


def trainers() -> dict[str, tuple[type, Callable[..., dict[str, Any]], dict[str, Any]]]:
    """backend -> (its training config dataclass, its trainer, its architecture defaults): the registry
    behind train_generator and the choices and shown defaults of ``labelgen train-generator``."""
    from labelgen.training.stylegan2_trainer import SG2_ARCH_DEFAULTS, StyleGAN2TrainConfig, train_stylegan2

    return {"ddpm": (DDPMTrainConfig, train_ddpm, DDPM_ARCH_DEFAULTS),
            "stylegan2": (StyleGAN2TrainConfig, train_stylegan2, SG2_ARCH_DEFAULTS)}


def train_generator(backend: str, data: Path, out: Path, **options) -> dict[str, Any]:
    """Dispatch to the backend's trainer (see :func:`trainers`) on a training engine (labelgen.engine: under
    ``torchrun --nproc-per-node K`` K processes share every batch; rank 0 holds OUT's lock and writes OUT)."""
    registry = trainers()
    if backend not in registry:
        raise LabelgenError(f"train-generator: unsupported backend {backend!r} (one of {', '.join(registry)})")
    config_class, trainer, _ = registry[backend]
    engine = Engine(options.get("device", "auto"), echo=options.pop("echo", print),
                    show_progress=options.pop("show_progress", True))
    try:
        with run_folder(out, engine) as folder:  # rank 0 holds OUT's lock (a killed run's temp files go)
            summary = trainer(engine, data, folder, config_class(**options), explicit=set(options))
    except BaseException:
        engine.dist.close()  # no barrier: the other ranks may never reach it (torchrun ends them)
        raise
    engine.close()
    return summary

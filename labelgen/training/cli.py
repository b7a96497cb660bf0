"""``labelgen train-generator``: train a DDPM or StyleGAN2 on a folder of unlabeled images."""
from __future__ import annotations

from pathlib import Path

import click

from labelgen.cli_defaults import defaults_of
from labelgen.cli_types import NON_NEGATIVE, POSITIVE, FiniteRange, device_choice
from labelgen.errors import LabelgenError
from labelgen.training.train_generator import COMPILE_CHOICES, trainers

# backend -> every default of its trainer (training config + architecture); shown in --help, stated there once
TRAINER_DEFAULTS = {name: {**defaults_of(config), **arch} for name, (config, _, arch) in trainers().items()}


def _text(value, none: str) -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(field: str, none: str = "", only: str | None = None) -> str:
    """'[ddpm 16, stylegan2 16]' (or '[16]' for ``only`` one backend): the trainers' own defaults for --help;
    ``none`` describes a None default."""
    if only:
        return f"[{_text(TRAINER_DEFAULTS[only][field], none)}]"
    return "[" + ", ".join(f"{b} {_text(d[field], none)}" for b, d in TRAINER_DEFAULTS.items()) + "]"


def _parse_channels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
        if not values or min(values) <= 0:
            raise ValueError
        return values
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated positive integers, e.g. 32,64,128,128") from None


@click.command("train-generator")
@click.option("--backend", type=click.Choice(list(TRAINER_DEFAULTS)), default="ddpm", help="What to train.")
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="Folder of images, or a split folder with images/ (e.g. CCP96/unlabeled).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder (loadable model + train/ checkpoint); rerun to resume.")
@click.option("--resolution", type=str, default=None, help="HxW to train at [default: the images' size].")
@click.option("--init", "init", type=str, default=None, metavar="PATH|default",
              help="Fine-tune an existing generator instead of starting from noise (its architecture; a ddpm at any "
                   "resolution divisible by its downsampling): ddpm: `default` (the embedded CCP DDPM), a DDPM folder "
                   "(DDPMPipeline layout), an ADM .pt with its model flags beside it; stylegan2: an output folder "
                   "of this trainer. Fixed for a run.")
@click.option("--annotations", type=click.Path(path_type=Path), default=None, metavar="W",
              help="ddpm: a workspace with annotated photos: the k-fold mIoU of its heads on the EMA generator's "
                   "features every --probe-every minutes and at the end, beside the pixel baseline's (printed; "
                   "OUT/train/log.csv probe_miou).")
@click.option("--probe-every", "probe_every_min", type=POSITIVE, default=None,
              help=f"ddpm: minutes between --annotations probes {_shown('probe_every_min', only='ddpm')}.")
@click.option("--channels", type=str, default=None,
              help=f"ddpm: UNet block channels {_shown('channels', only='ddpm')}; stylegan2: max channels of G and D "
                   f"{_shown('max_channels', only='stylegan2')}.")
@click.option("--layers-per-block", type=click.IntRange(1), default=None,
              help=f"ddpm: ResNet layers per UNet block {_shown('layers_per_block', only='ddpm')}.")
@click.option("--attention/--no-attention", default=None,
              help=f"ddpm: self-attention in the UNet mid block {_shown('attention', only='ddpm')}.")
@click.option("--export-fp16", is_flag=True, default=None,
              help="ddpm: store the exported UNet weights as float16 (half the size; loads as float32).")
@click.option("--beta-schedule", type=click.Choice(["linear", "cosine"]), default=None,
              help=f"ddpm: betas {_shown('beta_schedule', only='ddpm')}.")
@click.option("--z-dim", type=click.IntRange(1), default=None, help=f"stylegan2: latent size {_shown('z_dim', only='stylegan2')}.")
@click.option("--r1-gamma", type=NON_NEGATIVE, default=None,
              help=f"stylegan2: R1 weight {_shown('r1_gamma', 'auto from resolution', only='stylegan2')}.")
@click.option("--diffaug/--no-diffaug", default=None,
              help=f"stylegan2: DiffAugment colour/translation/cutout {_shown('diffaug', only='stylegan2')}.")
@click.option("--batch-size", type=click.IntRange(1), default=None, help=f"Images per step {_shown('batch_size')}.")
@click.option("--steps", type=click.IntRange(1), default=None, help=f"Total optimiser steps {_shown('steps')}.")
@click.option("--lr", type=POSITIVE, default=None, help=f"Learning rate {_shown('lr')}.")
@click.option("--ema", type=FiniteRange(0, 1), default=None,
              help=f"EMA decay of the exported weights {_shown('ema', 'ADA half-life schedule')}.")
@click.option("--warmup", type=click.IntRange(0), default=None, help=f"Linear LR warm-up steps {_shown('warmup')}.")
@click.option("--grad-clip", type=NON_NEGATIVE, default=None, help=f"Gradient-norm clip, 0 = off {_shown('grad_clip')}.")
@click.option("--sample-every", type=click.IntRange(0), default=None,
              help=f"Steps between sample grids, 0 = never {_shown('sample_every')}.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None,
              help=f"Steps between checkpoints/exports {_shown('checkpoint_every')}.")
@click.option("--log-every", type=click.IntRange(1), default=None,
              help=f"Steps between rows of OUT/train/log.csv (running mean loss) {_shown('log_every')}.")
@click.option("--time-limit", "time_limit_min", type=POSITIVE, default=None,
              help="Minutes; then stop gracefully with a checkpoint (rerun to continue).")
@click.option("--seed", type=int, default=None, help=f"Random seed {_shown('seed')}.")
@device_choice(default=None)  # passed on only when given, as every option here
@click.option("--compile", "compile_mode", type=click.Choice(COMPILE_CHOICES), default=None,
              help=f"ddpm: torch.compile the UNet (auto = on CUDA; falls back to eager with a warning) "
                   f"{_shown('compile', only='ddpm')}.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train_generator_cmd(backend, data, out, resolution, init, annotations, probe_every_min, channels, layers_per_block,
                        attention, export_fp16, beta_schedule, z_dim,
                        r1_gamma, diffaug, batch_size, steps, lr, ema, warmup, grad_clip, sample_every,
                        checkpoint_every, log_every, time_limit_min, seed, device, compile_mode, quiet):
    """Train a generator of your own domain on unlabeled images (resumable; see --time-limit).

    \b
    ddpm:      diffusers UNet2DModel + 1000-step DDPM -> OUT in DDPMPipeline layout (EMA weights),
               loadable by the ddpm backend.
    stylegan2: labelgen's StyleGAN2 + residual discriminator, R1, DiffAugment -> OUT loadable by the
               stylegan2 backend (save_pretrained folder).

    --init: fine-tune an existing generator instead (e.g. `default`, the embedded CCP DDPM, at your resolution);
    --annotations W: how good its features are for W's task as it trains (docs/teacher.md).

    Several processes (GPUs): torchrun --nproc-per-node K -m labelgen.cli -- train-generator ... (each takes
    1/K of every batch: --batch-size divisible by K; the loss curve of one process).
    """
    from labelgen.cli import parse_size
    from labelgen.training.train_generator import train_generator

    options = {
        "resolution": parse_size(resolution, "--resolution") if resolution else None,
        "batch_size": batch_size, "steps": steps, "lr": lr, "ema": ema, "warmup": warmup, "grad_clip": grad_clip,
        "sample_every": sample_every, "checkpoint_every": checkpoint_every, "log_every": log_every,
        "time_limit_min": time_limit_min,
        "seed": seed, "device": device, "init": init,
    }
    ch = _parse_channels(channels)
    export_fp16 = export_fp16 or None  # a flag: unset = False; None = "not given"
    if backend == "ddpm":
        bad = [n for n, v in (("--z-dim", z_dim), ("--r1-gamma", r1_gamma), ("--diffaug", diffaug)) if v is not None]
        options.update(channels=ch, layers_per_block=layers_per_block, attention=attention, beta_schedule=beta_schedule,
                       export_fp16=export_fp16, compile=compile_mode,
                       annotations=None if annotations is None else str(annotations), probe_every_min=probe_every_min)
        if probe_every_min is not None and annotations is None:
            raise LabelgenError("--probe-every: probes the features on --annotations W; give it too")
    else:
        bad = [n for n, v in (("--layers-per-block", layers_per_block), ("--attention", attention),
                              ("--beta-schedule", beta_schedule), ("--export-fp16", export_fp16),
                              ("--compile", compile_mode), ("--annotations", annotations),
                              ("--probe-every", probe_every_min)) if v is not None]
        if ch is not None and len(ch) != 1:
            raise LabelgenError("stylegan2: --channels takes one number (the maximum channel count), e.g. 256")
        options.update(max_channels=ch[0] if ch else None, z_dim=z_dim, r1_gamma=r1_gamma, diffaug=diffaug)
    if bad:
        raise LabelgenError(f"{', '.join(bad)}: not an option of the {backend} trainer")
    # explicitly given values only: the rest are the trainer's defaults (or the resumed run's settings)
    options = {k: v for k, v in options.items() if v is not None}
    summary = train_generator(backend, data, out, echo=click.echo, show_progress=not quiet, **options)
    if summary.get("stopped"):
        raise SystemExit(0)

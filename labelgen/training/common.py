"""Pieces shared by the generator trainers: data in memory, start/resume, the run folder's layout.

Device choice, torchrun, RNG seeding, EMA, the loop (cadence, stopping), the progress bar and the run folder's
one writer (the resume file, OUT/train/log.csv + tb/, sample grids, the export) are the training engine every
loop runs on: :mod:`labelgen.engine`."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelgen.data.io import list_images, read_image
from labelgen.errors import DataError, LabelgenError
from labelgen.run import progress as run_progress

CHECKPOINT_NAME = "checkpoint.pt"  # inside OUT/train/: the run's resume file (labelgen.run.save_resume)
TRAIN_DIR = "train"  # OUT/train/: checkpoint, log.csv, tb/, sample grids (not needed to load the model)
BACKENDS = ("ddpm", "stylegan2")  # the resume file's kind = the backend


# ---------------------------------------------------------------- data
def image_folder(path: Path) -> Path:
    """A folder of images, or a project split folder (``DIR/images``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: training data folder not found")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (expected a folder of images or a split folder with images/)")
    return path / "images" if (path / "images").is_dir() else path


def load_images(path: Path, resolution: tuple[int, int] | None = None, progress: bool = False) -> torch.Tensor:
    """All images of a folder as one uint8 tensor [N, 3, H, W] (read once, kept in memory).

    Without ``resolution`` every image must have the same size; with it, images of another size are
    resized by the project's photo rule (labelgen.imaging.fit_photo)."""
    from labelgen.imaging import fit_photo

    folder = image_folder(path)
    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no images (.png/.jpg/...) to train on")
    iterator = run_progress(len(files), desc="load images", unit="img", leave=False, iterable=files,
                            disable=not progress)
    arrays: list[np.ndarray] = []
    for f in iterator:
        arr = read_image(f)
        if resolution is not None and arr.shape[:2] != tuple(resolution):
            arr, _ = fit_photo(arr, tuple(resolution))
        elif arrays and arr.shape != arrays[0].shape:
            raise DataError(f"{f}: size {arr.shape[1]}x{arr.shape[0]} (WxH) differs from {files[0].name} "
                            f"({arrays[0].shape[1]}x{arrays[0].shape[0]}); pass --resolution HxW to resize")
        arrays.append(arr)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def check_divisible(resolution: tuple[int, int], factor: int, what: str) -> None:
    h, w = resolution
    if h % factor or w % factor:
        raise LabelgenError(f"resolution {h}x{w} (HxW) must be divisible by {factor} ({what}); "
                            f"pass --resolution with multiples of {factor}, e.g. "
                            f"{max(factor, h // factor * factor)}x{max(factor, w // factor * factor)}")


def augment_batch(images_u8: torch.Tensor, index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 images -> float [-1, 1] with random horizontal flips (randomness from ``gen`` only)."""
    x = images_u8[index].float().div_(127.5).sub_(1.0)
    flip = torch.rand(x.shape[0], generator=gen, device=gen.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


# ---------------------------------------------------------------- start / resume
# per session: never taken from the resumed run
NOT_CARRIED = ("time_limit_min", "device", "compile", "annotations", "probe_every_min")


@dataclass
class TrainingStart:
    """What both generator trainers begin with (see :func:`begin_training`)."""

    device: torch.device
    run: dict[str, Any]  # the run's settings (a resumed run's own, unless given again)
    saved: dict[str, Any] | None  # the resume state, or None for a new run
    cfg: Any  # the trainer's config with the run's settings
    images: torch.Tensor  # uint8 [N, 3, H, W], the training data


def run_folder(out: Path | str, engine=None):
    """OUT as a generator run's folder (labelgen.engine.RunFolder: its one writer): OUT/train/checkpoint.pt,
    OUT/train/log.csv + tb/ + samples/, the export in OUT."""
    from labelgen.engine import RunFolder

    return RunFolder(out, engine, train_dir=TRAIN_DIR, resume_name=CHECKPOINT_NAME, what="train-generator")


def begin_training(engine, folder, backend: str, cfg, arch_defaults: dict[str, Any], explicit: set[str] | None,
                   data: Path) -> TrainingStart:
    """New-or-resumed run settings (``start_or_resume``) and the training images (on every rank), for either
    trainer; the device is the engine's (labelgen.engine.Engine), ``folder`` the run's (:func:`run_folder`)."""
    run, saved = start_or_resume(folder, backend, asdict(cfg), arch_defaults, explicit)
    cfg = replace(cfg, **{k: v for k, v in run.items() if k not in arch_defaults})
    images = load_images(data, tuple(run["resolution"]) if run["resolution"] else None,
                         progress=engine.show_progress)
    return TrainingStart(engine.device, run, saved, cfg, images)


def start_or_resume(folder, backend: str, requested: dict[str, Any], arch_defaults: dict[str, Any],
                    explicit: set[str] | None = None):
    """(run settings, saved checkpoint or None) for a run in ``folder`` (:func:`run_folder`).

    Resuming: the architecture keys (those of ``arch_defaults``) come from the checkpoint, and an
    explicitly requested value that differs is refused; the other settings (steps, lr, batch size,
    ...) not in ``explicit`` are the resumed run's own, so rerunning with only --data/--out continues
    the same run (``explicit`` None: every requested value counts as given). New run: unset
    architecture keys take ``arch_defaults``."""
    out = folder.root
    if out.exists() and not out.is_dir():
        raise LabelgenError(f"{out}: exists and is not a folder")
    saved = folder.load_resume(BACKENDS)
    if saved is None:
        return {**requested, **{k: requested[k] if requested[k] is not None else d
                                for k, d in arch_defaults.items()}}, None
    if saved["kind"] != backend:
        raise LabelgenError(f"{out}: holds a {saved['kind']} training run, not {backend}")
    for k in arch_defaults:
        if requested.get(k) is not None and _norm(requested[k]) != _norm(saved["config"].get(k)):
            raise LabelgenError(f"{out}: has a checkpoint trained with {k}={saved['config'].get(k)!r}, not "
                                f"{requested[k]!r}; use the same settings to resume, or a new --out")
    carried = {} if explicit is None else {k: v for k, v in saved["config"].items()
                                           if k in requested and k not in explicit and k not in NOT_CARRIED}
    # a key a run made before it existed (e.g. init) has its default
    return {**requested, **carried, **{k: saved["config"].get(k, d) for k, d in arch_defaults.items()}}, saved


def _norm(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place (old one renamed away first, then removed)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------- running mean
@dataclass
class RunningMean:
    values: list[float] = field(default_factory=list)
    size: int = 100

    def add(self, v: float) -> None:
        self.values.append(v)
        if len(self.values) > self.size:
            self.values.pop(0)

    @property
    def mean(self) -> float:
        return sum(self.values) / max(1, len(self.values))

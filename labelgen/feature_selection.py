"""Features chosen on validation: which diffusion timesteps and decoder blocks (GAN teachers: synthesis blocks)
the heads read (``labelgen tune-features``).

DDPM-seg chose its timesteps and blocks by hand; here a sweep decides, scored like everything else in the
project (labelgen.metrics mIoU of the workspace's head type):

1. a *sweep teacher*: the workspace's generator with every candidate timestep (and the workspace's current ones)
   and every block switched on (``Generator.with_options``), so one pass gives the features of all candidates;
   the features of the annotated images (and of ``--val`` images) are computed once through ``Teacher.features``
   and kept in memory (float16);
2. a candidate = (timesteps, blocks); its score = mIoU on ``--val`` of a head trained on the annotations with
   those levels, or, without ``--val``, k-fold cross-validation over the annotations (one confusion matrix over
   every held-out fold); the sweep's heads train without flip augmentation (``train-heads --augment``: it doubles
   the cost of every candidate, and the final heads, trained by ``train-heads``, get it);
3. search: forward selection of timesteps with all blocks (add the timestep that helps most, up to
   ``max_timesteps``, going on past a step that does not help; the best set seen wins. On CCP, t = 25 alone and
   t = 25, 50 score within 0.0003 of each other on val (0.3650 / 0.3653); where the pair came out a hair lower, a
   search that stopped there kept t = 25, where it came out higher it went on to t = 25, 50, 100 at 0.3716), then
   backward elimination of blocks (drop a block while that helps). Ties keep the smaller set. The workspace's
   current choice is scored too, as it is, and kept when
   nothing beats it.

The winner is written into the workspace (generator options ``timesteps`` / ``feature_layers`` for the built-in
backends, so the generator computes only those levels; ``feature_layers`` of the workspace for plug-ins), and the
whole table into ``W/feature_sweep.json``. The generator id changes with it, so the heads must be trained again
(``labelgen train-heads``), which the command says.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from labelgen.errors import LabelgenError
from labelgen.heads.train import TrainConfig, evaluate_head, train_head
from labelgen.losses import class_balance_weights, mask_class_frequencies
from labelgen.metrics import ConfusionMatrix
from labelgen.teacher import Teacher

SWEEP_NAME = "feature_sweep.json"
DEFAULT_CANDIDATE_TIMESTEPS = (25, 50, 100, 150, 250, 400)


@dataclass
class SweepConfig:
    timesteps: tuple[int, ...] = DEFAULT_CANDIDATE_TIMESTEPS  # candidate diffusion timesteps
    max_timesteps: int = 3  # at most this many timesteps are chosen
    folds: int = 4  # k-fold over the annotations when there is no --val
    epochs: int = 8  # head training epochs per candidate (the final heads are trained by train-heads)
    pixels_per_image: int = 1024
    class_balance: float = 0.0  # as train-heads --class-balance
    seed: int = 0


@dataclass
class Candidate:
    timesteps: tuple[int, ...]  # () for GAN teachers
    blocks: tuple[int, ...]
    miou: float = float("nan")
    seconds: float = 0.0
    per_class: list[float] = field(default_factory=list)

    def label(self) -> str:
        t = f"t={','.join(map(str, self.timesteps))} " if self.timesteps else ""
        return f"{t}blocks={','.join(map(str, self.blocks))}"


class _Layout:
    """Flat level index of (block, timestep) in the sweep teacher's feature list: level-major, then timestep
    (labelgen.generators.diffusion); GAN teachers have one level per block."""

    def __init__(self, blocks: list[int], timesteps: list[int]):
        self.blocks, self.timesteps = blocks, timesteps

    def indices(self, candidate: Candidate) -> list[int]:
        T = max(1, len(self.timesteps))
        ts = [self.timesteps.index(t) for t in candidate.timesteps] if self.timesteps else [0]
        return [self.blocks.index(b) * T + ti for b in sorted(candidate.blocks) for ti in sorted(ts)]


def _sweep_generator(workspace, config: SweepConfig):
    """(generator with every candidate level on, blocks, timesteps) for the workspace's backend. A diffusion
    teacher also computes the workspace's current timesteps when they are not candidates, so that today's
    choice is scored as it is (the reference the sweep must beat), not as its overlap with the candidates."""
    generator = workspace.generator()
    builtin = ":" not in workspace.config.backend
    diffusion = builtin and hasattr(generator, "timesteps") and "timesteps" in generator.config
    if diffusion:
        if not config.timesteps:
            raise LabelgenError("--timesteps: give at least one candidate timestep")
        sweep = generator.with_options(timesteps=sorted(set(config.timesteps) | set(_workspace_timesteps(workspace))),
                                       feature_layers=None)
        return sweep, list(sweep.layers), list(sweep.timesteps)
    if builtin and "feature_layers" in generator.config:
        sweep = generator.with_options(feature_layers=None)
        return sweep, list(range(len(sweep.feature_channels))), []
    return generator, list(range(len(generator.feature_channels))), []  # plug-in: its own levels


def tune_features(workspace, val_folder: Path | None = None, config: SweepConfig | None = None,
                  log: Callable[[str], None] = print, progress: bool = True, apply: bool = True) -> dict[str, Any]:
    """Run the sweep (module docstring); returns the saved report {"candidates": [...], "best": {...}, ...}."""
    from labelgen.data.io import atomic_write_json
    from labelgen.run import progress as progress_bar

    config = config or SweepConfig()
    annotated = workspace.annotated_ids()
    if len(annotated) < 2:
        raise LabelgenError(f"{workspace.annotations_dir}: tune-features needs at least 2 annotated images")
    if val_folder is None and not 2 <= config.folds:
        raise LabelgenError("--folds must be at least 2 (or give --val FOLDER)")
    start = time.perf_counter()
    generator, blocks, timesteps = _sweep_generator(workspace, config)
    teacher = Teacher(generator)
    layout = _Layout(blocks, timesteps)
    names = list(workspace.classes.names)
    num_classes = len(names)

    def store(features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [f.to(torch.float16).cpu() for f in features]

    train_set = []  # (levels fp16 [1, C_i, h_i, w_i], mask [1, H, W] int64)
    for annotation_id in progress_bar(len(annotated), desc="features (annotations)", unit="image",
                                      disable=not progress, iterable=annotated):
        image, recipe, mask = workspace.read_annotation(annotation_id)
        train_set.append((store(teacher.features(recipes=[recipe], images=[image])),
                          torch.from_numpy(mask.astype(np.int64))[None]))
    val_set = None
    if val_folder is not None:
        val_set = _val_features(workspace, teacher, Path(val_folder), store, progress)
    class_weights = None
    if config.class_balance > 0:
        freq = mask_class_frequencies([m[0].numpy() for _, m in train_set], num_classes)
        class_weights = class_balance_weights(torch.from_numpy(freq), config.class_balance)
    head_type = workspace.config.head.get("type", "pixel-mlp")
    head_options = {k: v for k, v in workspace.config.head.items() if k != "type"}
    train_config = TrainConfig(epochs=config.epochs, pixels_per_image=config.pixels_per_image,
                               class_balance=config.class_balance, seed=config.seed)
    channels = teacher.channels
    scored: dict[tuple, Candidate] = {}

    def score(candidate: Candidate) -> Candidate:
        key = (candidate.timesteps, candidate.blocks)
        if key in scored:
            return scored[key]
        t0 = time.perf_counter()
        idx = layout.indices(candidate)

        def pick(example):  # the candidate's levels of one example, float32
            return [example[0][i].float() for i in idx], example[1]

        scores = _score_levels(train_set, val_set, pick, [channels[i] for i in idx], head_type, head_options,
                               num_classes, workspace.resolution, train_config, class_weights, config.folds)
        candidate.miou, candidate.per_class = float(scores.miou), [float(v) for v in scores.per_class_iou]
        candidate.seconds = round(time.perf_counter() - t0, 1)
        scored[key] = candidate
        log(f"  {candidate.label():40s} mIoU {candidate.miou:.4f}  ({candidate.seconds:.0f} s)")
        return candidate

    how = (f"--val {val_folder}" if val_set is not None
           else f"{min(config.folds, len(annotated))}-fold over the annotations")
    log(f"feature sweep ({head_type} heads, {config.epochs} epochs each, scored on {how}):")
    all_blocks = tuple(blocks)
    if timesteps:
        best = forward_select(score, config.timesteps, all_blocks, config.max_timesteps)
    else:
        best = score(Candidate((), all_blocks))
    improved = True  # backward elimination of blocks
    while improved and len(best.blocks) > 1:
        improved = False
        trials = [score(Candidate(best.timesteps, tuple(b for b in best.blocks if b != drop))) for drop in best.blocks]
        top = max(trials, key=lambda c: c.miou)
        if top.miou > best.miou:
            best, improved = top, True
    default = _current_choice(workspace, blocks, timesteps)
    reference = scored.get(default) or score(Candidate(*default))
    if reference.miou > best.miou:  # the search found nothing better than today's choice: keep it
        best = reference
    report = {"scored_on": how, "head": head_type, "sweep": asdict(config), "classes": names,
              "candidates": [asdict(c) for c in scored.values()], "best": asdict(best), "before": asdict(reference),
              "seconds": round(time.perf_counter() - start, 1), "applied": False}
    log(f"best: {best.label()} mIoU {best.miou:.4f} (the workspace's current choice, {reference.label()}: "
        f"{reference.miou:.4f})")
    with workspace.writing():  # W/.lock: the config and its report written by one process at a time
        if apply:
            report["applied"] = _apply(workspace, best, blocks, timesteps)
        report = json.loads(json.dumps(report))  # as saved (lists, not tuples)
        atomic_write_json(workspace.root / SWEEP_NAME, report)
    return report


def forward_select(score: Callable[[Candidate], Candidate], timesteps, blocks: tuple[int, ...],
                   max_timesteps: int) -> Candidate:
    """Forward selection of timesteps with ``blocks``: each step adds the timestep whose set scores best, up to
    ``max_timesteps`` (or every timestep), going on past a step that does not beat the best so far (the scores of
    neighbouring sets are often within a few 1e-4 of each other, and a near-tie at one size must not hide a better
    larger set); the best set seen wins, a tie keeping the smaller."""
    chosen: tuple[int, ...] = ()
    best = None
    pool = sorted(set(timesteps))
    while len(chosen) < min(max_timesteps, len(pool)):
        trials = [score(Candidate(tuple(sorted(chosen + (t,))), blocks)) for t in pool if t not in chosen]
        top = max(trials, key=lambda c: c.miou)
        if best is None or top.miou > best.miou:
            best = top
        chosen = top.timesteps
    return best


def _val_features(workspace, teacher: Teacher, folder: Path, store, progress: bool):
    from labelgen.heads.train import real_images

    if not teacher.can_encode_images:
        raise LabelgenError(f"--val scores real images: the {workspace.config.backend} teacher cannot compute their "
                            "features; leave --val out (k-fold over the annotations)")
    return [(store(teacher.features(images=[image])), mask)
            for _, image, mask in real_images(workspace, folder, progress=progress)]


def _score_levels(train_set, val_set, pick, in_channels, head_type, head_options, num_classes, resolution,
                  train_config: TrainConfig, class_weights, folds: int):
    from labelgen.heads import create_head

    def fit(examples):
        head = create_head(head_type, in_channels, num_classes, resolution, seed=train_config.seed, **head_options)
        train_head(head, lambda i: pick(examples[i]), len(examples), train_config, class_weights=class_weights)
        return head

    if val_set is not None:
        return evaluate_head(fit(train_set), (pick(ex) for ex in val_set), num_classes)
    k = min(folds, len(train_set))
    matrix = ConfusionMatrix(num_classes)
    for fold in range(k):
        held = [ex for i, ex in enumerate(train_set) if i % k == fold]
        head = fit([ex for i, ex in enumerate(train_set) if i % k != fold])
        with torch.no_grad():
            for ex in held:
                levels, mask = pick(ex)
                matrix.update(head.predict_proba(levels).mean(dim=1).argmax(dim=1), mask)
    return matrix.compute()


def _workspace_timesteps(workspace) -> list[int]:
    """The diffusion timesteps the workspace's heads read today (generator options, else the workspace's)."""
    return [int(t) for t in workspace.config.generator_options.get("timesteps") or workspace.config.timesteps or []]


def _current_choice(workspace, blocks: list[int], timesteps: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The workspace's selection today, as (timesteps, blocks) of the sweep (the sweep computes its timesteps)."""
    options = workspace.config.generator_options
    if timesteps:
        ts = tuple(sorted(t for t in _workspace_timesteps(workspace) if t in timesteps))
        chosen_blocks = options.get("feature_layers")
        bl = tuple(sorted(blocks if chosen_blocks is None else [b % len(blocks) for b in chosen_blocks]))
        return ts or (timesteps[0],), bl
    if ":" in workspace.config.backend:
        return (), tuple(workspace.layer_indices)
    chosen_blocks = options.get("feature_layers")
    return (), tuple(sorted(blocks if chosen_blocks is None else [b % len(blocks) for b in chosen_blocks]))


def _apply(workspace, best: Candidate, blocks: list[int], timesteps: list[int]) -> bool:
    """Store the choice in workspace.json (the generator then computes only those levels)."""
    options = dict(workspace.config.generator_options)
    if ":" in workspace.config.backend:
        workspace.config.feature_layers = list(best.blocks)
    else:
        options["feature_layers"] = None if list(best.blocks) == blocks else list(best.blocks)
        if timesteps:
            options["timesteps"] = list(best.timesteps)
            workspace.config.timesteps = list(best.timesteps)
        workspace.config.generator_options = options
        workspace.config.feature_layers = None
    from labelgen.workspace import load_workspace_generator

    generator = load_workspace_generator(workspace.config.backend, workspace.checkpoint_path(),
                                         workspace.config.generator_options)
    workspace.config.feature_channels = [int(c) for c in generator.feature_channels]
    workspace.save_config()
    workspace.reload()
    return True

"""Features chosen on validation: which diffusion timesteps and decoder blocks (GAN teachers: synthesis blocks)
the heads read (``labelgen tune-features``).

DDPM-seg chose its timesteps and blocks by hand; here a sweep decides, scored like everything else in the
project (labelgen.metrics mIoU of the workspace's head type):

1. a *sweep teacher*: the teacher's generator with every candidate timestep (and the teacher's current ones)
   and every block switched on (``Teacher.with_levels``), so one pass gives the features of all candidates;
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

The report's ``choice`` is the winner as the teacher keeps levels (``Teacher.level_settings``: generator options
``timesteps`` / ``feature_layers`` where the generator takes them, so it computes only those levels, else the
teacher's ``feature_layers``); ``Workspace.keep_feature_sweep`` writes it into workspace.json and the whole table
into ``W/feature_sweep.json``. The generator id changes with it, so the heads must be trained again
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
    class_balance: float = 0.5  # as train-heads --class-balance (the same default)
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


def _sweep_teacher(teacher: Teacher, config: SweepConfig) -> tuple[Teacher, list[int], list[int]]:
    """(teacher with every candidate level on, blocks, timesteps). A diffusion teacher also computes its current
    timesteps when they are not candidates, so that today's choice is scored as it is (the reference the sweep
    must beat), not as its overlap with the candidates."""
    timesteps = None
    if teacher.timesteps:
        if not config.timesteps:
            raise LabelgenError("--timesteps: give at least one candidate timestep")
        timesteps = sorted(set(config.timesteps) | set(teacher.timesteps))
    sweep = teacher.with_levels(None, timesteps)
    T = max(1, len(sweep.timesteps))
    return sweep, list(range(len(sweep.channels) // T)), list(sweep.timesteps)


def tune_features(teacher: Teacher, annotations, val_folder: Path | None = None, config: SweepConfig | None = None,
                  head: dict[str, Any] | None = None, log: Callable[[str], None] = print, progress: bool = True
                  ) -> dict[str, Any]:
    """Run the sweep (module docstring) over ``teacher``'s generator on the annotated items of ``annotations`` (a
    workspace, or labelgen.annotations.Annotations) with heads of ``head`` (``{"type", options}``; default a pixel
    MLP); returns the report {"candidates": [...], "best": {...}, "choice": {...}, ...}."""
    from labelgen.run import progress as progress_bar

    config = config or SweepConfig()
    annotated = annotations.annotated_ids()
    if len(annotated) < 2:
        raise LabelgenError(f"{annotations.annotations_dir}: tune-features needs at least 2 annotated images")
    if val_folder is None and not 2 <= config.folds:
        raise LabelgenError("--folds must be at least 2 (or give --val FOLDER)")
    start = time.perf_counter()
    sweep, blocks, timesteps = _sweep_teacher(teacher, config)
    layout = _Layout(blocks, timesteps)
    names = list(annotations.classes.names)
    num_classes = len(names)

    def store(features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [f.to(torch.float16).cpu() for f in features]

    train_set = []  # (levels fp16 [1, C_i, h_i, w_i], mask [1, H, W] int64)
    for annotation_id in progress_bar(len(annotated), desc="features (annotations)", unit="image",
                                      disable=not progress, iterable=annotated):
        image, recipe = annotations.read_item(annotation_id)
        mask = annotations.read_mask(annotation_id, image.shape)
        train_set.append((store(sweep.features(recipes=[recipe], images=[image])),
                          torch.from_numpy(mask.astype(np.int64))[None]))
    val_set = None
    if val_folder is not None:
        from labelgen.heads.train import real_images

        val_set = [(store(sweep.features(images=[image])), mask)
                   for _, image, mask in real_images(sweep, Path(val_folder), num_classes, progress=progress)]
    class_weights = None
    if config.class_balance > 0:
        freq = mask_class_frequencies([m[0].numpy() for _, m in train_set], num_classes)
        class_weights = class_balance_weights(torch.from_numpy(freq), config.class_balance)
    head_options = dict(head or {"type": "pixel-mlp"})
    head_type = head_options.pop("type")
    train_config = TrainConfig(epochs=config.epochs, pixels_per_image=config.pixels_per_image,
                               class_balance=config.class_balance, seed=config.seed)
    channels = sweep.channels
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
                               num_classes, teacher.resolution, train_config, class_weights, config.folds)
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
    default = _current_choice(teacher, blocks, timesteps)
    reference = scored.get(default) or score(Candidate(*default))
    if reference.miou > best.miou:  # the search found nothing better than today's choice: keep it
        best = reference
    choice = {"blocks": None if list(best.blocks) == blocks else list(best.blocks),
              "timesteps": list(best.timesteps) or None}
    report = {"scored_on": how, "head": head_type, "sweep": asdict(config), "classes": names,
              "candidates": [asdict(c) for c in scored.values()], "best": asdict(best), "before": asdict(reference),
              "choice": choice, "seconds": round(time.perf_counter() - start, 1), "applied": False}
    log(f"best: {best.label()} mIoU {best.miou:.4f} (the current choice, {reference.label()}: {reference.miou:.4f})")
    return json.loads(json.dumps(report))  # as saved (lists, not tuples)


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


def _current_choice(teacher: Teacher, blocks: list[int], timesteps: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The teacher's selection today, as (timesteps, blocks) of the sweep (the sweep computes its timesteps)."""
    chosen = teacher.blocks
    ts = tuple(sorted(t for t in teacher.timesteps if t in timesteps))
    bl = tuple(sorted(blocks if chosen is None else {b % len(blocks) for b in chosen}))
    return (ts or (timesteps[0],), bl) if timesteps else ((), bl)

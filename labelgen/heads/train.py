"""Training task heads on a few annotated images, with memory flat in the number of images.

Examples come from a ``load_example(i) -> (features, mask)`` callback (features: native-resolution
levels [1, C_i, h_i, w_i], e.g. read from the workspace's disk cache; mask: [1, H, W] int64, 255 =
ignore), so only one mini-batch of ``images_per_step`` images is ever in memory:

* pixel-MLP: each step samples ``pixels_per_image`` labelled pixels per image *per ensemble member*
  and reads the features only at those pixels (bilinear lookup, heads/sampling.py): the working set
  is images_per_step x K x pixels_per_image x sum(C_i) floats, whatever the image size or count.
  (DatasetGAN materialised every upsampled pixel: ~160 GB for 16 images at 512^2.)
* conv: a mini-batch forward at the output resolution; loss CE + 3 * Dice.

One epoch = one pass over the training examples in random mini-batches; the pixel MLP takes
``steps_per_batch`` optimiser steps (fresh pixels each) per loaded mini-batch.

Flip augmentation (``augment``; ``train_heads``): image-encoding (diffusion) teachers also train on each
annotation's mirror image, its features computed by the generator from the mirrored pixels (the UNet is not
mirror-equivariant, so these are new feature vectors, unlike mirrored feature maps, which would give a pixel
MLP the same pixels again) with the mirrored mask. What it did on CCP-8: labelgen/default_teacher/README.md and
the README's CCP-8 table (row teacher-selected-cb-flip).
"""
from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelgen.data.io import IGNORE_INDEX
from labelgen.engine import Engine, RunFolder
from labelgen.errors import LabelgenError
from labelgen.heads.base import TaskHead
from labelgen.heads.conv import ConvInterpreter, dice_loss
from labelgen.heads.pixel_mlp import PixelMLPEnsemble
from labelgen.imaging import mirror_image
from labelgen.losses import class_balance_weights, mask_class_frequencies
from labelgen.metrics import ConfusionMatrix, Scores
from labelgen.run import progress as progress_bar, seed_everything

Example = tuple[list[torch.Tensor], torch.Tensor]  # (levels [1, C_i, h_i, w_i], mask [1, H, W] int64)


@dataclass
class TrainConfig:
    epochs: int = 30
    images_per_step: int = 2
    pixels_per_image: int = 2048  # pixel-MLP: sampled labelled pixels per image per member per step
    steps_per_batch: int = 4  # pixel-MLP optimiser steps per loaded mini-batch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 3.0  # conv head: loss = CE + dice_weight * Dice
    class_balance: float = 0.5  # CE weight of class c ~ its pixel share in the annotations^-class_balance (0 = off;
    # 0.5, the default: the CCP table's best measured recipe, +0.019 test mIoU over 0, docs/benchmarks.md)
    seed: int = 0
    augment: str = "auto"  # AUGMENTS: "flip" = also each annotation's mirror image; "auto" = flip where the teacher
    # computes features of images (diffusion), else none; a saved run records what "auto" became


AUGMENTS = ("auto", "flip", "none")


def resolve_augment(augment: str, teacher) -> str:
    """"flip" or "none": what ``augment`` means for ``teacher`` ("auto": flip where it encodes images)."""
    if augment not in AUGMENTS:
        raise LabelgenError(f"augment {augment!r}: choose one of {', '.join(AUGMENTS)}")
    if augment == "flip":
        teacher.require_image_encoding("--augment flip")
    return "flip" if augment == "flip" or (augment == "auto" and teacher.can_encode_images) else "none"


@dataclass
class TrainResult:
    losses: list[float]  # mean loss per epoch
    val_miou: list[float]  # per epoch (empty without validation)
    peak_step_bytes: int  # largest per-step working set of feature tensors (loaded + sampled)
    steps: int
    holdout: Scores | None = None  # train_heads(holdout=K): scores on the K held-out images
    head: TaskHead | None = None  # train_heads: the trained head (also saved when given a folder)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("holdout", "head")}


def _collate(examples: list[Example]) -> Example:
    levels = [torch.cat([ex[0][i] for ex in examples]) for i in range(len(examples[0][0]))]  # [B, C_i, h_i, w_i]
    return levels, torch.cat([ex[1] for ex in examples])  # [B, H, W]


def _tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _sample_pixels(mask: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random labelled pixels of each image: mask [B, H, W] -> ys, xs [B, count] (with replacement)."""
    width = mask.shape[2]
    ys, xs = [], []
    for image_mask in mask:
        labelled = torch.nonzero(image_mask.flatten() != IGNORE_INDEX).squeeze(1)  # [L]
        pick = labelled[torch.randint(len(labelled), (count,), generator=generator)]
        ys.append(pick // width)
        xs.append(pick % width)
    return torch.stack(ys), torch.stack(xs)


def _pixel_mlp_step(head: PixelMLPEnsemble, levels: list[torch.Tensor], mask: torch.Tensor, config: TrainConfig,
                    rng: torch.Generator, class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    batch, members, pixels = mask.shape[0], head.ensemble, config.pixels_per_image
    ys, xs = _sample_pixels(mask, members * pixels, rng)  # [B, K*P]
    inputs = head.features_at(levels, ys, xs)  # [B, K*P, D]
    labels = mask[torch.arange(batch)[:, None], ys, xs]  # [B, K*P]
    inputs = inputs.view(batch, members, pixels, -1).transpose(0, 1).reshape(members, batch * pixels, -1)  # [K, B*P, D]
    labels = labels.view(batch, members, pixels).transpose(0, 1).reshape(members, batch * pixels)  # [K, B*P]
    logits = head.forward_members(inputs)  # [K, B*P, C]
    loss = F.cross_entropy(logits.reshape(-1, head.num_classes), labels.reshape(-1).to(logits.device),
                           weight=class_weights)
    return loss, _tensor_bytes([inputs, logits])


def _conv_step(head: ConvInterpreter, levels: list[torch.Tensor], mask: torch.Tensor,
               config: TrainConfig, class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    logits = head(levels)  # [B, K, C, H, W]
    target = mask.to(logits.device)
    loss = sum(F.cross_entropy(logits[:, k], target, ignore_index=IGNORE_INDEX, weight=class_weights)
               + config.dice_weight * dice_loss(logits[:, k], target) for k in range(head.ensemble))
    return loss / head.ensemble, _tensor_bytes([logits])


def train_head(head: TaskHead, load_example: Callable[[int], Example], num_examples: int,
               config: TrainConfig = TrainConfig(), validate: Callable[[TaskHead], Scores] | None = None,
               on_epoch: Callable[[int, float, Scores | None], None] | None = None,
               on_step: Callable[[], None] | None = None, device: str = "cpu",
               class_weights: torch.Tensor | None = None) -> TrainResult:
    """Train ``head`` in place on examples 0..num_examples-1 (see module docstring). ``class_weights`` [C]:
    per-class cross-entropy weights (``config.class_balance``). The loop is the engine's (``Engine.fit`` over
    ``config.epochs`` epochs: each epoch's steps, then validation and ``on_epoch`` at its end)."""
    if num_examples < 1:
        raise LabelgenError("no annotated images to train on (annotate some: W/annotations/<id>.mask.png)")
    engine = Engine(device, torchrun=False)  # device and optimiser rules of every loop; heads train in one process
    rng = seed_everything(config.seed)  # pixel draws: a CPU generator (the masks stay on the CPU)
    order_rng = random.Random(config.seed)
    head.to(engine.device).train()
    optimizer = engine.optimizer(torch.optim.AdamW, head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    is_mlp = isinstance(head, PixelMLPEnsemble)
    if class_weights is not None:
        class_weights = class_weights.float().to(device)
    steps_per_batch = config.steps_per_batch if is_mlp else 1
    losses, val_miou, peak = [], [], 0
    epoch_loss, epoch_steps = 0.0, 0

    def epoch_batches() -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """One epoch: the examples in a new random order, a mini-batch loaded at a time (skipped without a
        labelled pixel), each given ``steps_per_batch`` optimiser steps."""
        order = list(range(num_examples))
        order_rng.shuffle(order)
        for start in range(0, num_examples, config.images_per_step):
            levels, mask = _collate([load_example(i) for i in order[start:start + config.images_per_step]])
            levels = [level.to(device) for level in levels]
            if not bool((mask != IGNORE_INDEX).any()):
                continue
            for _ in range(steps_per_batch):
                yield levels, mask

    batches = epoch_batches()

    def train_one(step: int) -> None:
        nonlocal peak, epoch_loss, epoch_steps
        levels, mask = next(batches)  # StopIteration: this epoch's data is done (Engine.fit calls end_epoch)
        if is_mlp:
            loss, step_bytes = _pixel_mlp_step(head, levels, mask, config, rng, class_weights)  # type: ignore[arg-type]
        else:
            loss, step_bytes = _conv_step(head, levels, mask, config, class_weights)  # type: ignore[arg-type]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        peak = max(peak, step_bytes + _tensor_bytes(levels))
        epoch_loss += float(loss.detach())
        epoch_steps += 1
        if on_step:
            on_step()

    def end_epoch(epoch: int) -> None:
        nonlocal batches, epoch_loss, epoch_steps
        losses.append(epoch_loss / max(1, epoch_steps))
        scores = validate(head) if validate else None
        if scores is not None:
            val_miou.append(scores.miou)
            head.train()
        if on_epoch:
            on_epoch(epoch, losses[-1], scores)
        batches, epoch_loss, epoch_steps = epoch_batches(), 0.0, 0

    steps = engine.fit(train_one, epochs=config.epochs, on_epoch=end_epoch).step
    head.eval()
    return TrainResult(losses, val_miou, peak, steps)


def check_step_memory(head: TaskHead, config: TrainConfig, device: str = "cpu") -> None:
    """Refuse, in one line, a pixel-MLP step that cannot fit: its working set (module docstring; x2 for the
    gathered copy and the gradients, plus the members' hidden and output activations) grows with
    --pixels-per-image x --images-per-step and would otherwise end in an out-of-memory kill mid-run."""
    if not isinstance(head, PixelMLPEnsemble):
        return
    rows = config.images_per_step * head.ensemble * config.pixels_per_image
    need = 4 * rows * (2 * head.in_dim + 3 * sum(head.config.get("hidden", ())) + 2 * head.num_classes)
    free = _free_memory(device)
    if free is not None and need > free:
        raise LabelgenError(f"--pixels-per-image {config.pixels_per_image}: a training step would hold about "
                            f"{need / 2**30:.1f} GiB ({config.images_per_step} images x {head.ensemble} members x "
                            f"{config.pixels_per_image} pixels x {head.in_dim} features), more than the "
                            f"{free / 2**30:.1f} GiB free on {device}; lower --pixels-per-image or --images-per-step")


def _free_memory(device: str) -> int | None:
    """Bytes free for tensors on ``device`` (MemAvailable of the host for the CPU); None when unknown."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        return kib * 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def steps_per_epoch(head_type: str, num_examples: int, config: TrainConfig) -> int:
    batches = math.ceil(num_examples / config.images_per_step)
    return batches * (config.steps_per_batch if head_type == "pixel-mlp" else 1)


@torch.no_grad()
def evaluate_head(head: TaskHead, examples, num_classes: int, device: str = "cpu") -> Scores:
    """mIoU (labelgen.metrics.ConfusionMatrix) of the teacher's prediction (``labelgen.teacher.predict_heads``:
    the ensemble mean) over (levels, mask) pairs."""
    from labelgen.teacher import predict_heads

    matrix = ConfusionMatrix(num_classes)
    for levels, mask in examples:
        matrix.update(predict_heads([head], [level.to(device) for level in levels]).mask.long().cpu(), mask)
    return matrix.compute()


def real_images(teacher, folder_path, num_classes: int, limit: int | None = None, progress: bool = False):
    """(key, image uint8 [H, W, 3], mask int64 [1, H, W]) of each labelled real image of a folder (project format,
    ``num_classes`` classes), brought to the teacher's resolution by the photo rule (labelgen.imaging.fit_photo);
    ``key``: a hash of the image's path (for feature store keys). Shared by head validation, ``evaluate_teacher``
    and ``tune-features``; refused by ``Teacher.require_image_encoding`` for a GAN teacher."""
    from labelgen.data.folder import open_labelled
    from labelgen.imaging import fit_photo

    teacher.require_image_encoding(f"scoring on the real images of {folder_path}")
    folder = open_labelled(folder_path, require_masks=True)
    if len(folder.classes) != num_classes:
        raise LabelgenError(f"{folder_path}: {len(folder.classes)} classes, the teacher has {num_classes}")
    count = len(folder) if limit is None else min(limit, len(folder))
    for i in progress_bar(count, desc=f"features of {Path(folder_path).name}", unit="image", disable=not progress,
                          iterable=range(count)):
        item = folder[i]
        image, mask = fit_photo(item.image, teacher.resolution, item.mask)
        key = hashlib.sha256(str(item.image_path.resolve()).encode()).hexdigest()[:16]
        yield key, image, torch.from_numpy(mask.astype("int64"))[None]


def real_examples(teacher, folder_path, num_classes: int, store=None, prefix: str = "val", limit: int | None = None,
                  progress: bool = False, mirror: bool = False):
    """(features, mask) of each labelled real image of a folder (``real_images``): what ``evaluate_head`` scores
    a teacher on. ``store``: a labelgen.annotations.FeatureStore keeping them (under ``prefix``/; validation during
    training reads them every epoch); ``mirror``: also the features of the mirrored image, (features, mirrored,
    mask)."""
    from labelgen.annotations import FeatureStore

    store = store or FeatureStore(keep=False)
    for key, image, mask in real_images(teacher, folder_path, num_classes, limit, progress):
        features = store.features(teacher, f"{prefix}/{key}", image)
        if mirror:
            yield features, store.features(teacher, f"{prefix}/{key}.mirror", image, mirror=True), mask
        else:
            yield features, mask


TRAIN_LOG_NAME = "train_log.json"  # W/heads/train_log.json: the finished run's record
LOG_COLUMNS = ("epoch", "loss", "val_miou")  # W/heads/log.csv (after step, total; one row per epoch) + W/heads/tb/


def split_holdout(ids: list[str], holdout: int) -> tuple[list[str], list[str]]:
    """(train ids, held-out ids): the last ``holdout`` annotated ids (sorted) are held out."""
    if holdout < 0 or holdout >= len(ids):
        raise LabelgenError(f"--holdout {holdout}: choose 0..{len(ids) - 1} (at least one of the {len(ids)} "
                            "annotated images must stay for training)")
    return ids[:len(ids) - holdout], ids[len(ids) - holdout:]


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def train_heads(teacher, annotations, config: TrainConfig | None = None, out_dir: Path | str | None = None,
                head: dict[str, Any] | None = None, val_folder=None, device: str = "cpu",
                log: Callable[[str], None] = print, progress: bool = True, holdout: int = 0, store=None
                ) -> TrainResult:
    """``labelgen train-heads``: train a head on ``teacher``'s features (its selected levels) of the annotated items
    of ``annotations`` (a workspace, or labelgen.annotations.Annotations); ``head``: its type and options
    (``{"type": "pixel-mlp", "ensemble": 3}``; default a pixel MLP); returned in the TrainResult, and saved to
    ``out_dir`` (e.g. W/heads/, ``Workspace.head_settings``) with the teacher's generator id and levels.

    Features are computed once per annotation (native resolution, kept by ``store``, a
    labelgen.annotations.FeatureStore: a workspace's W/cache/features; default in memory) and read back one
    mini-batch at a time. ``val_folder``: real images + masks (project folder format, image-encoding teachers),
    resized to the teacher's resolution; mIoU printed per epoch. ``holdout``: the last K annotated ids are not
    trained on; their per-class IoU + mIoU (ensemble-mean prediction) is logged as a table and, like every run's
    losses, written to ``out_dir``/train_log.json (atomic). While it runs, ``out_dir`` is locked and its log.csv +
    tb/ get one row per epoch (the app's progress)."""
    from labelgen.annotations import FeatureStore

    store = store or FeatureStore()
    if out_dir is None:
        return _train_heads(teacher, annotations, config, None, head, val_folder, device, log, progress, holdout,
                            store)
    # W/heads/ written by its one writer: locked; log.csv + tb/ describe the heads saved beside them (the previous
    # run's are put back if this one fails before it saved new heads: RunFolder.previous_log_kept)
    folder = RunFolder(out_dir, what="train-heads")
    with folder, folder.previous_log_kept():
        return _train_heads(teacher, annotations, config, folder, head, val_folder, device, log, progress, holdout,
                            store)


def _train_heads(teacher, annotations, config: TrainConfig | None, folder: RunFolder | None,
                 head: dict[str, Any] | None, val_folder, device: str, log: Callable[[str], None], progress: bool,
                 holdout: int, store) -> TrainResult:
    from labelgen.heads import create_head

    config = config or TrainConfig()
    annotated = annotations.annotated_ids()
    if not annotated:
        raise LabelgenError(f"{annotations.annotations_dir}: no annotated images (no <id>.mask.png yet)")
    config = replace(config, augment=resolve_augment(config.augment, teacher))
    mirror = config.augment == "flip"
    ids, held_out = split_holdout(annotated, holdout)
    examples = [(i, False) for i in ids] + ([(i, True) for i in ids] if mirror else [])  # (annotation id, mirrored)
    num_classes = len(annotations.classes)
    names = list(annotations.classes.names)
    image_shape = (*teacher.resolution, 3)
    head_options = dict(head or {"type": "pixel-mlp"})
    head = create_head(head_options.pop("type"), teacher.channels, num_classes, teacher.resolution, seed=config.seed,
                       **head_options)
    check_step_memory(head, config, device)  # before any feature is computed or the log touched
    for annotation_id in progress_bar(len(annotated), desc="features", unit="image", disable=not progress,
                                      iterable=annotated):
        annotations.read_mask(annotation_id, image_shape)  # validate every mask before training
        store.annotation(teacher, annotations, annotation_id)  # computed once, kept by the store
        if mirror and annotation_id in ids:
            store.annotation(teacher, annotations, annotation_id, mirror=True)
    if mirror:
        log(f"flip augmentation: {len(ids)} annotated images + their mirror images = {len(examples)} training examples")

    def annotation_example(annotation_id: str, mirrored: bool = False) -> Example:  # from the store each time
        mask = annotations.read_mask(annotation_id, image_shape)  # [H, W]
        if mirrored:
            mask = mirror_image(mask)
        return (store.annotation(teacher, annotations, annotation_id, mirror=mirrored),
                torch.from_numpy(mask.astype("int64"))[None])  # [1, H, W]

    def load_example(i: int) -> Example:
        return annotation_example(*examples[i])

    validate = None
    if val_folder is not None:
        for _ in real_examples(teacher, val_folder, num_classes, store, progress=progress):
            pass  # checks the folder now and stores its features (read back at every validation)

        def validate(head: TaskHead) -> Scores:
            return evaluate_head(head, real_examples(teacher, val_folder, num_classes, store), num_classes, device)

    class_weights = None
    if config.class_balance > 0:
        frequencies = mask_class_frequencies((annotations.read_mask(i, image_shape) for i in ids), num_classes)
        class_weights = class_balance_weights(torch.from_numpy(frequencies), config.class_balance)  # [C]
        log(f"class balance (frequency^-{config.class_balance:g}): " + ", ".join(
            f"{n} {f:.3f}->x{w:.2f}" for n, f, w in zip(names, frequencies, class_weights.tolist())))
    total = config.epochs * steps_per_epoch(head.head_type, len(examples), config)
    run_log = folder.open_log(LOG_COLUMNS, total) if folder else None  # a new run: the previous log starts over
    bar = progress_bar(total, desc=f"train {head.head_type} x{head.ensemble}", disable=not progress)
    done = [0]  # optimiser steps so far (tqdm does not count while disabled)

    def on_step() -> None:
        done[0] += 1
        bar.update(1)

    def on_epoch(epoch: int, loss: float, scores: Scores | None) -> None:
        miou = None if scores is None else _finite(scores.miou)
        if run_log is not None:
            run_log.row(done[0], {"epoch": epoch + 1, "loss": f"{loss:.6f}",
                                  "val_miou": None if miou is None else f"{miou:.6f}"},
                        scalars={"train/loss": loss, **({} if miou is None else {"val/miou": miou})})
        bar.set_postfix(loss=f"{loss:.4f}")
        if scores is not None:
            (bar.write if progress else log)(f"epoch {epoch + 1}/{config.epochs}: loss {loss:.4f}, val mIoU {scores.miou:.4f}")

    try:
        result = train_head(head, load_example, len(examples), config, validate, on_epoch, on_step=on_step,
                            device=device, class_weights=class_weights)
    finally:
        bar.close()
        if folder is not None:
            folder.close_log()
    holdout_log = None
    if held_out:
        result.holdout = evaluate_head(head, (annotation_example(i) for i in held_out), num_classes, device)
        holdout_log = {"ids": held_out, "miou": _finite(result.holdout.miou),
                       "pixel_accuracy": _finite(result.holdout.pixel_accuracy),
                       "per_class": {n: _finite(v) for n, v in zip(names, result.holdout.per_class_iou)}}
        log(f"held-out IoU on {len(held_out)} annotated image(s) not trained on ({', '.join(held_out)}):\n"
            + result.holdout.table(names))
    result.head = head.cpu()
    if folder is None:
        return result
    folder.export(head, extra={
        "generator": teacher.generator_id, "feature_layers": teacher.levels,
        "classes": names, "annotations": ids, "holdout": held_out, "train": asdict(config),
        "final_loss": result.losses[-1] if result.losses else None,
        "val_miou": result.val_miou[-1] if result.val_miou else None})
    folder.write_json(TRAIN_LOG_NAME, {
        "head": head.head_type, "ensemble": head.ensemble, "classes": names, "train_ids": ids,
        "train": asdict(config), "steps": result.steps, "losses": result.losses, "val_miou": result.val_miou,
        "holdout": holdout_log})
    return result

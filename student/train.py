"""Student training: supervised, label-distill, feature-distill, dreamteacher (see labelgen.student.distill).

One process, or several under ``torchrun`` (DDP: gloo on CPU, nccl on GPU; each rank reads its own
slice of a deterministic per-epoch order). bf16 autocast + channels_last on GPU only. Device, torchrun,
seeding, the optimiser's fused kernel, EMA and DDP come from the training engine (labelgen.engine); the loop is
its ``Engine.fit`` over one step function, and RUN_DIR is written by its one writer (``RunFolder``).

Resume: ``RUN_DIR/last.pt`` (the resume file of :mod:`labelgen.run`, loaded with
``weights_only=True``) holds model (+ regressor), optimizer, LR scheduler, step, RNG states and loss
history; it is written atomically every ``save_every`` steps and at the end. A run started again on
the same RUN_DIR continues from it and computes exactly the steps an uninterrupted run would have
(same data order, same augmentation, same optimizer state). RUN_DIR is locked while a run writes
to it; ``log.csv`` and ``tb/`` are cut back to the resumed step.

Model selection: with ``val`` the student is scored (mIoU over the labelled folder) every
``val_every`` steps and at the end; the best-scoring weights go to ``RUN_DIR/best.safetensors``
(step and mIoU also in its safetensors metadata) and ``RUN_DIR/best.json`` {"step", "miou", "val",
"per_class"}, both written atomically; a resumed run reads best.json back and keeps competing with it.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from labelgen.errors import LabelgenError
from labelgen.losses import class_balance_weights
from labelgen.engine import EMA, Cadence, Engine, RunFolder, Tick
from labelgen.run import rng_state, seed_everything, set_rng_state
from labelgen.student.augment import AUGMENT_POLICIES
from labelgen.student.data import (
    ResumableSampler, StudentDataset, class_frequencies, classes_of, default_loader_workers, make_loader, open_sources,
    parse_weights,
)
from labelgen.student.distill import (
    FeatureRegressor, TeacherTargets, feature_distill_loss, hard_label_loss, loss_weights,
    match_levels, resize_to, soft_label_loss,
)
from labelgen.student.models import (
    BEST_JSON, BEST_NAME, IMAGENET_MEAN, IMAGENET_STD, NO_FEATURE_PYRAMID, REGRESSOR_NAME, STATE_NAME, Student,
    StudentConfig, check_image_size, create_student, describe_init, encoder_channels, feature_pyramid, load_matching,
    read_best,
)

MODES = ("supervised", "label-distill", "feature-distill", "dreamteacher")
FEATURE_MODES = ("feature-distill", "dreamteacher")
LABEL_MODES = ("label-distill", "dreamteacher")
SCHEDULES = ("cosine", "poly")


@dataclass
class TrainOptions:
    """The one home of the training defaults: ``student train``'s options take theirs from these fields
    (labelgen.student.cli); the run saves them in RUN_DIR/student_config.json ("train")."""

    mode: str
    data: str | list[str]  # one source, or several concatenated (--data A --data B)
    out: str
    val: str | None = None
    val_every: int | None = None  # score --val every N steps (and at the end); None: at the end only
    data_weights: list[float] | None = None  # per source: draw rate relative to its size (several sources)
    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    image_size: tuple[int, int] = (64, 64)
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 10
    max_steps: int | None = None
    schedule: str = "cosine"  # cosine | poly
    warmup_steps: int | None = None  # None: 5% of the steps (at most 500)
    tau: float = 4.0
    hard_weight: float = 0.0
    label_weight: float = 1.0
    feature_weight: float = 1.0
    at_weight: float = 10.0
    uncertainty_weighting: bool = False
    class_balance: float = 0.5  # per-class loss weights ~ pixel frequency^-class_balance (0 = off; 0.5 = 1/sqrt, the
    # default: every CCP table student uses it, docs/benchmarks.md)
    teacher: str | None = None
    feature_cache: bool = False
    features: str | None = None  # a stored features set (`labelgen features`): read instead of running the teacher
    init: str | None = None
    workers: int = field(default_factory=default_loader_workers)  # DataLoader processes: sized from the machine
    augment: bool = True
    augment_policy: str = "basic"  # basic | strong (labelgen.student.augment)
    consistency_weight: float = 0.0  # KL(student on the un-jittered view -> on the colour-augmented view); 0 = off
    ema_decay: float = 0.0  # > 0: an exponential moving average of the weights is what is validated and saved; 0 = off
    amp: bool = True  # bf16 autocast + channels_last on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda (labelgen.run.pick_device); under torchrun cuda:<local rank>
    seed: int = 0
    save_every: int = 200
    log_every: int = 1
    resume: bool = True
    progress: bool = True


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    losses: list[float]
    images_per_s: float
    val_miou: float | None = None  # at the last step
    best_miou: float | None = None
    best_step: int | None = None
    init_report: str | None = None
    resumed_from: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Stop(Exception):
    """Raised by ``stop_after`` (tests simulate a kill at a step boundary)."""


LOG_COLUMNS = ("epoch", "loss", "lr", "images_per_s", "parts", "val_miou")  # RUN_DIR/log.csv after step, total
RUN_KIND = "student"  # the resume file's kind


def lr_lambda(total: int, warmup: int, schedule: str):
    """Linear warm-up to 1, then cosine (to 0) or poly (power 0.9) decay over the remaining steps."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else (1 - t) ** 0.9
    return f


class StudentTrainModule(nn.Module):
    """Student + optional feature regressor, one module so DDP wraps both.

    forward(x) -> (logits [N, C, H, W] or None, regressed features list or None). Without a regressor
    the student runs whole (every smp architecture's own forward, e.g. DPT's encoder returns prefix tokens too)."""

    def __init__(self, student: nn.Module, regressor: FeatureRegressor | None, need_logits: bool):
        super().__init__()
        self.student, self.regressor, self.need_logits = student, regressor, need_logits

    def forward(self, x: torch.Tensor):
        if self.regressor is None:
            return self.student(x), None
        features = self.student.encoder(x)
        logits = self.student.segmentation_head(self.student.decoder(features)) if self.need_logits else None
        regressed = self.regressor(features) if self.regressor is not None else None
        return logits, regressed


def _check(options: TrainOptions) -> None:
    if options.mode not in MODES:
        raise LabelgenError(f"unknown mode {options.mode!r} (one of {', '.join(MODES)})")
    if options.mode in FEATURE_MODES and not (options.teacher or options.features):
        raise LabelgenError(f"--mode {options.mode} needs --teacher WORKSPACE (the generator in the loop) or "
                            "--features FEATS (stored by `labelgen features`)")
    if options.features and options.mode not in FEATURE_MODES:
        raise LabelgenError(f"--features feeds teacher features to --mode {' or '.join(FEATURE_MODES)}, "
                            f"not {options.mode}")
    if options.features and options.feature_cache:
        raise LabelgenError("--feature-cache keeps features computed in the loop; with --features they are read "
                            "from disk (drop one)")
    if options.mode in FEATURE_MODES and options.arch.lower() in NO_FEATURE_PYRAMID:
        raise LabelgenError(f"--mode {options.mode} regresses teacher features from a stride 4..32 encoder pyramid; "
                            f"{options.arch}'s one-stride ViT encoder has none (use another --arch)")
    if options.max_steps is not None and options.max_steps <= 0:
        raise LabelgenError("--max-steps must be positive")
    if options.tau <= 0:
        raise LabelgenError("--tau must be positive")
    if options.consistency_weight < 0:
        raise LabelgenError("--consistency-weight must be >= 0")
    if options.consistency_weight > 0 and options.mode == "feature-distill":
        raise LabelgenError("--consistency-weight compares segmentation predictions; --mode feature-distill has none")
    if not 0 <= options.ema_decay < 1:
        raise LabelgenError(f"--ema-decay must be in [0, 1) (got {options.ema_decay:g}; 0 = off)")
    if options.ema_decay > 0 and options.mode == "feature-distill":
        raise LabelgenError("--ema-decay averages the segmentation network; --mode feature-distill trains none")
    if options.augment_policy not in AUGMENT_POLICIES:
        raise LabelgenError(f"unknown augmentation policy {options.augment_policy!r} (one of "
                            f"{', '.join(AUGMENT_POLICIES)})")
    if options.schedule not in SCHEDULES:
        raise LabelgenError(f"unknown schedule {options.schedule!r} (one of {', '.join(SCHEDULES)})")
    if options.val_every is not None and options.val_every <= 0:
        raise LabelgenError("--val-every must be positive")
    if options.val_every is not None and not options.val:
        raise LabelgenError("--val-every needs --val FOLDER (a labelled folder to score)")
    if options.data_weights is not None:
        sources = [options.data] if isinstance(options.data, (str, Path)) else list(options.data)
        parse_weights(",".join(map(str, options.data_weights)), len(sources))


def _load_teacher(options: TrainOptions, device) -> TeacherTargets:
    """The --teacher workspace's Teacher (generator + selected levels; no head needed) in the loop."""
    from labelgen.workspace import Workspace

    return TeacherTargets(Workspace(options.teacher).teacher(head=False, device=str(device)), cache=options.feature_cache)


def train(options: TrainOptions, stop_after: int | None = None, teacher: TeacherTargets | None = None,
          log=print) -> TrainResult:
    """Train (or resume) a student into ``options.out``; ``teacher`` overrides --teacher (tests).

    Rank 0 holds RUN_DIR's lock for the whole run (a second run into the same RUN_DIR is refused)."""
    _check(options)
    engine = Engine(options.device, amp=options.amp, echo=log, show_progress=options.progress)
    with RunFolder(options.out, engine, resume_name=STATE_NAME, what="student train") as folder:
        return _train(options, engine, folder, stop_after, teacher)


def _train(options: TrainOptions, engine: Engine, folder: RunFolder, stop_after: int | None,
           teacher: TeacherTargets | None) -> TrainResult:
    rank, world, device, is_main = engine.rank, engine.world, engine.device, engine.is_main
    cuda, amp = engine.cuda, engine.amp  # bf16 autocast + channels_last on CUDA only
    run_dir = Path(options.out)
    log = engine.echo  # messages of rank 0
    seed_everything(options.seed + rank)  # each rank draws its own samples' augmentation

    # ---- data
    mode = options.mode
    source = open_sources(options.data, require_masks=mode == "supervised")
    classes = classes_of(source, _teacher_classes(options))
    parts = getattr(source, "parts", [source])
    if len(parts) > 1:
        log("data: " + ", ".join(f"{p.path} ({len(p)}{f', weight {w:g}' if options.data_weights else ''})"
                                  for p, w in zip(parts, options.data_weights or [1.0] * len(parts))))
    if mode == "supervised" and any(hasattr(p, "shard_paths") for p in parts):
        log("note: --mode supervised on a shard set trains on its hard masks")
    if options.val and mode != "feature-distill":
        _check_val_classes(options.val, classes)
    stored = _stored_features(options, source, teacher, log) if options.features else None
    dataset = StudentDataset(source, len(classes), options.image_size, IMAGENET_MEAN, IMAGENET_STD, seed=options.seed,
                             augment=options.augment, geometric=mode not in FEATURE_MODES,
                             want_soft=mode in LABEL_MODES, uncertainty_weighting=options.uncertainty_weighting,
                             warn=is_main, policy=options.augment_policy,
                             want_plain_colour=options.consistency_weight > 0, features=stored)
    class_weights = None
    if options.class_balance > 0 and mode != "feature-distill":
        freq = class_frequencies(source, len(classes), options.data_weights, seed=options.seed)
        class_weights = class_balance_weights(torch.from_numpy(freq), options.class_balance)  # [C]
        log(f"class balance (frequency^-{options.class_balance:g}): " + ", ".join(
            f"{name} {f:.3f}->x{w:.2f}" for name, f, w in zip(classes.names, freq, class_weights.tolist())))
    sampler = ResumableSampler(len(dataset), options.batch_size, rank, world, options.seed,
                               sizes=[len(p) for p in parts], weights=options.data_weights)
    loader = make_loader(dataset, sampler, options.batch_size, options.workers, pin_memory=cuda)
    steps_per_epoch = sampler.batches_per_epoch
    total = options.max_steps or options.epochs * steps_per_epoch
    warmup = options.warmup_steps if options.warmup_steps is not None else min(500, max(1, total // 20))

    # ---- model
    student = create_student(options.arch, options.encoder, len(classes), options.encoder_weights)
    check_image_size(student, options.arch, options.image_size)
    init_report = None
    if options.init:
        loaded = load_matching(student, options.init)
        init_report = describe_init(loaded)
        log(f"init from {loaded['path']}: {init_report}")
    regressor, teacher_feats = None, None
    if mode in FEATURE_MODES:
        if stored is not None:
            channels, teacher_sizes = stored.channels, stored.sizes
        else:
            with torch.random.fork_rng(devices=[]):  # building a generator draws random numbers: not the student's
                teacher_feats = teacher or _load_teacher(options, device)
            teacher_feats.check_data(source.metas)
            info = teacher_feats.teacher.feature_info  # channels and strides of its levels: the teacher is not run
            channels, teacher_sizes = [level.num_chs for level in info], [level.size for level in info]
        sizes = [size for _, size in feature_pyramid(student, options.arch, options.image_size)]  # strides 4..32
        levels = match_levels(sizes, teacher_sizes)
        regressor = FeatureRegressor(encoder_channels(student), channels, levels)
        log("feature levels: " + ", ".join(f"teacher {(c, *hw)} -> student stride {4 * 2 ** lv} {sizes[lv]}"
                                         for c, hw, lv in zip(channels, teacher_sizes, levels)))
    module = StudentTrainModule(student, regressor, need_logits=mode != "feature-distill").to(device)
    module = engine.channels_last(module)
    optimizer = engine.optimizer(torch.optim.AdamW, [p for p in module.parameters() if p.requires_grad], lr=options.lr,
                                 weight_decay=options.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, options.schedule))

    config = StudentConfig(arch=options.arch, encoder=options.encoder, classes=classes.to_json()["classes"],
                           image_size=list(options.image_size), mode=mode,
                           train={k: v for k, v in asdict(options).items() if k not in ("progress",)})
    config.train["image_size"] = list(options.image_size)

    # ---- resume
    step, losses, resumed_from = 0, [], 0
    state = folder.load_resume(RUN_KIND) if options.resume else None
    if state is not None:
        _check_compatible(run_dir, state, config, options.ema_decay)
        module.load_state_dict(state["module"])
        engine.load_optimizer(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses = int(state["step"]), list(state["losses"])
        set_rng_state(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
        resumed_from = step
        log(f"resumed {run_dir} at step {step}/{total}")
    else:
        folder.remove(BEST_JSON, BEST_NAME)  # a new run competes with nothing from an older one
    validate = bool(options.val) and is_main and mode != "feature-distill"
    if options.val and mode == "feature-distill":
        log("note: --mode feature-distill trains no segmentation head; --val is not scored")
    best = _resume_best(run_dir, options.val, log) if validate and step else None

    # DDP under torchrun (batch norm synchronised on CUDA; converted in place, so ``module`` is what trains)
    train_module = engine.wrap(module, find_unused_parameters=mode == "feature-distill")

    # --ema-decay: the averaged weights (labelgen.engine.EMA, warm-up min(decay, (1 + k) / (10 + k)) at update k)
    # are the student that is validated, kept as best and saved; the raw weights train on (and are in last.pt too)
    ema = EMA(module.student, options.ema_decay) if options.ema_decay > 0 else None
    if ema is not None and state is not None:
        ema.shadow.load_state_dict(state["ema"])
    averaged = ema.shadow if ema is not None else module.student  # what val, best.safetensors and model.safetensors hold

    # log.csv + tb/, both cut back to the step resumed from (rows of later steps died with the killed run)
    run_log = folder.open_log(LOG_COLUMNS, total, resume_step=step)

    saved_at = [-1]

    def save(done: int) -> None:
        if saved_at[0] == done:
            return
        saved_at[0] = done
        rngs = engine.dist.gather(rng_state())  # every rank takes part (each resumes its own streams); rank 0 writes
        if not is_main:
            return
        folder.save_resume(RUN_KIND, done, {
            "module": module.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "losses": losses, "rng": rngs, "config": json.loads(json.dumps(asdict(config))), "total": total,
            **({"ema": ema.shadow.state_dict()} if ema is not None else {})})
        folder.export(Student(**asdict(config), _net=averaged))
        if module.regressor is not None:
            folder.save_weights(REGRESSOR_NAME, module.regressor)

    last_val: dict[str, Any] = {}

    def score_val(done: int) -> float:
        """mIoU on --val at this step; new best -> best.safetensors + best.json (rank 0 only)."""
        nonlocal best
        from labelgen.student.evaluate import evaluate_folder

        if last_val.get("step") == done:
            return last_val["miou"]
        scores, _ = evaluate_folder(averaged, config, options.val, device)
        miou = float(scores.miou)
        last_val.update(step=done, miou=miou)
        run_log.scalar("val/miou", miou, done)
        if best is None or miou > best["miou"]:
            names = [c["name"] for c in config.classes]
            best = {"step": done, "miou": miou, "val": str(options.val),
                    "per_class": scores.to_json(names).get("per_class")}
            # weights first (step + mIoU in their own metadata), then best.json
            folder.save_weights(BEST_NAME, averaged, metadata={"step": str(done), "miou": repr(miou)})
            folder.write_json(BEST_JSON, best)
        run_log.scalar("val/best_miou", best["miou"], done)
        log(f"step {done}: val mIoU {miou:.4f} (best {best['miou']:.4f} at step {best['step']})")
        return miou

    batches = None  # this epoch's batches: the sampler resumes mid-epoch at the batch the step count says
    epoch = 0
    images_seen, t0 = 0, time.perf_counter()
    step_times: list[float] = []  # wall seconds of each step (data wait included)
    t_last = t0

    def next_batch(k: int):
        nonlocal batches, epoch
        while True:
            if batches is None:
                epoch, start_batch = divmod(k, steps_per_epoch)
                sampler.set_epoch(epoch, start_batch)
                batches = iter(loader)
            try:
                return next(batches)
            except StopIteration:
                batches = None

    def train_one(k: int) -> dict[str, Any]:
        """Step k (0-based): a batch, forward + loss, backward, AdamW, LR schedule, EMA."""
        nonlocal images_seen, t_last
        if stop_after is not None and k >= stop_after and k > resumed_from:
            raise _Stop(k)  # (tests) a kill after step k >= stop_after: nothing more is done or saved
        batch = next_batch(k)
        try:
            loss, parts = _step(train_module, batch, mode, options, teacher_feats, source.metas, device, amp,
                                class_weights)
        except ValueError as e:  # torch's batch norm: "Expected more than 1 value per channel when training"
            if "value per channel" not in str(e):
                raise
            h, w = options.image_size
            raise LabelgenError(f"--batch-size {options.batch_size}: at --image-size {h}x{w} a batch-norm layer "
                                f"of the {options.arch} student gets one value per channel, which it cannot "
                                "train on; use --batch-size 2 or more (or a larger --image-size)") from None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(module.student, k)  # update k = step (0-based)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise LabelgenError(f"loss became {value} at step {k + 1}; lower --lr")
        losses.append(value)
        now = time.perf_counter()
        step_times.append(now - t_last)
        t_last = now
        images_seen += batch["image"].shape[0] * world
        rate = images_seen / max(1e-9, time.perf_counter() - t0)
        bar.set_postfix(loss=f"{value:.4f}", img_s=f"{rate:.1f}")
        return {"epoch": epoch, "loss": value, "rate": rate, "parts": parts}

    def validate_row(tick: Tick) -> dict[str, Any]:
        miou = score_val(tick.step)
        bar.set_postfix(loss=f"{tick.values['loss']:.4f}", img_s=f"{tick.values['rate']:.1f}", val=f"{miou:.3f}",
                        best=f"{best['miou']:.3f}")
        return {"val_miou": f"{miou:.6f}"}

    def log_row(tick: Tick):
        value, rate, parts = tick.values["loss"], tick.values["rate"], tick.values["parts"]
        lr = scheduler.get_last_lr()[0]
        return ({"epoch": tick.values["epoch"], "loss": f"{value:.6f}", "lr": f"{lr:.6g}", "images_per_s": f"{rate:.2f}",
                 "parts": " ".join(f"{k}={v:.5f}" for k, v in parts.items()), **(tick.validated or {})},
                {"train/loss": value, "train/lr": lr, "train/images_per_s": rate,
                 **{f"train/{k}": v for k, v in parts.items()}})

    # validation every --val-every steps and at the last; a log row every --log-every steps (and with a validation);
    # a checkpoint every --save-every steps and at the last
    cadence = Cadence(log=options.log_every, validate=options.val_every, checkpoint=options.save_every,
                      at_end=("validate", "checkpoint"))
    bar = engine.progress(total, step)
    module.train()
    try:
        step = engine.fit(train_one, step, total, cadence, log=run_log, bar=bar,
                          on_validate=validate_row if validate else None, on_log=log_row,
                          on_checkpoint=lambda tick: save(tick.step)).step
    except _Stop as stop:
        step = stop.args[0]
    except Exception:
        if resumed_from == 0 and saved_at[0] < 0:
            folder.discard_log()  # bad data found in a new run before its first checkpoint: no log.csv, no tb/
        raise
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    rate = images_seen / max(1e-9, elapsed)
    result = TrainResult(run_dir, step, losses, rate, init_report=init_report, resumed_from=resumed_from,
                         extra={"step_times": step_times, "images_per_step": options.batch_size * world, "rank": rank})
    if stop_after is None or step >= total:
        if validate:
            result.val_miou = score_val(step)
            log(f"validation mIoU on {options.val}: {result.val_miou:.4f}")
        save(step)
    if best is not None:
        result.best_miou, result.best_step = best["miou"], best["step"]
    folder.close_log()
    engine.barrier()
    return result


def _stored_features(options: TrainOptions, source, teacher: TeacherTargets | None, log):
    """--features FEATS matched to the training images by their pixels; refused when made by another teacher
    than the one given (``teacher``, else --teacher WORKSPACE; with neither, the set's own teacher is taken)."""
    from labelgen.student.features import StoredFeatures

    identity = None
    if teacher is not None:
        identity = (teacher.teacher.generator_id, teacher.teacher.levels)
    elif options.teacher:
        from labelgen.workspace import Workspace

        workspace = Workspace(options.teacher)
        with torch.random.fork_rng(devices=[]):  # the id of a generator without a checkpoint file builds it
            identity = (workspace.generator_id(), workspace.layer_indices)
    stored = StoredFeatures(options.features, source, identity)
    log(f"teacher features read from {options.features} (teacher {stored.generator_id}, levels {stored.levels})")
    return stored


def _teacher_classes(options: TrainOptions):
    if not options.teacher:
        return None
    try:
        from labelgen.workspace import Workspace

        return Workspace(options.teacher).classes
    except LabelgenError:
        return None


def _check_val_classes(val: str, classes) -> None:
    """Fail before training, not at the first --val-every step."""
    from labelgen.data.folder import open_labelled

    names = list(open_labelled(val, require_masks=True).classes.names)
    if names != list(classes.names):
        raise LabelgenError(f"{val}: --val classes {names} differ from the training data's {list(classes.names)}")


def _resume_best(run_dir: Path, val: str, log) -> dict | None:
    """best.json of the run being resumed (None: none yet, or scored on another --val)."""
    best = read_best(run_dir)
    if best is None:
        return None
    if str(best.get("val")) != str(val):
        log(f"note: {run_dir / BEST_JSON} was scored on {best.get('val')}, not {val}; best selection starts afresh")
        return None
    log(f"best so far: val mIoU {best['miou']:.4f} at step {best['step']}")
    return best


def _check_compatible(run_dir: Path, state: dict, config: StudentConfig, ema_decay: float) -> None:
    saved = state.get("config", {})
    saved_decay = float(saved.get("train", {}).get("ema_decay") or 0.0)
    if saved_decay != ema_decay or (ema_decay > 0) != ("ema" in state):
        raise LabelgenError(f"{run_dir}: holds a run with --ema-decay {saved_decay:g}, not {ema_decay:g} "
                            "(use the same, a new --out or --no-resume)")
    for key in ("arch", "encoder", "mode", "image_size"):
        if saved.get(key) != getattr(config, key):
            raise LabelgenError(f"{run_dir}: holds a {saved.get('mode')} run of {saved.get('arch')}/{saved.get('encoder')} "
                                f"at {saved.get('image_size')}; {key} differs (use a new --out or --no-resume)")
    if [c["name"] for c in saved.get("classes", [])] != [c["name"] for c in config.classes]:
        raise LabelgenError(f"{run_dir}: the saved run has other classes; use a new --out or --no-resume")


def _step(module, batch, mode: str, options: TrainOptions, teacher: TeacherTargets | None, metas, device, amp: bool,
          class_weights: torch.Tensor | None = None):
    """One forward + loss. Returns (loss, {part: value}). ``class_weights`` [C]: --class-balance.
    ``options.consistency_weight``: + KL(softmax(student on the un-jittered view, detached) || student on the
    colour-augmented view), over every pixel (unlabelled ones too)."""
    x = batch["image"].to(device, non_blocking=True)  # [N, 3, H, W]
    if options.consistency_weight > 0:  # and the un-jittered view: one forward over both, [2N, 3, H, W]
        x = torch.cat([x, batch["image_plain"].to(device, non_blocking=True)])
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    mask = batch["mask"].to(device)  # [N, H, W]
    weights = batch["weight"].to(device) if options.uncertainty_weighting else None  # [N]
    weights = loss_weights(mask, class_weights, weights)  # [N, H, W] with class balance, else [N] or None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits, regressed = module(x)
    plain = None
    if options.consistency_weight > 0:  # split the two views again
        n = mask.shape[0]
        logits, plain = logits[:n], logits[n:]
        regressed = None if regressed is None else [r[:n] for r in regressed]
    parts: dict[str, float] = {}
    loss = x.new_zeros(())
    if mode == "supervised":
        loss = hard_label_loss(logits, mask, weights)
        parts["ce"] = float(loss.detach())
    if mode in LABEL_MODES:
        soft = batch["soft"].to(device)  # [N, C, H, W]
        valid = (mask != 255) & (soft.sum(1) > 0)
        label = soft_label_loss(logits, soft, options.tau, valid, weights)
        parts["kd"] = float(label.detach())
        if options.hard_weight > 0:
            hard = hard_label_loss(logits, mask, weights)
            parts["ce"] = float(hard.detach())
            label = label + options.hard_weight * hard
        loss = loss + options.label_weight * label
    if mode in FEATURE_MODES:
        if "features" in batch:  # stored (--features): float16 on disk, float32 from here on
            targets = [f.to(device, non_blocking=True).float() for f in batch["features"]]
        else:
            indices = batch["index"].tolist()
            targets = teacher(batch["image_pm1"].to(device), [metas[i] for i in indices], [str(i) for i in indices])
        targets = [resize_to(t, tuple(r.shape[-2:])) for t, r in zip(targets, regressed)]
        feat, fparts = feature_distill_loss(regressed, targets, options.at_weight)
        parts.update(fparts)
        loss = loss + options.feature_weight * feat
    if plain is not None:
        # the prediction on the colour-augmented view follows the one on the un-jittered view (no gradient to it)
        target = torch.softmax(plain.detach().float(), dim=1)  # [N, C, H, W]
        consistency = soft_label_loss(logits, target, 1.0)
        parts["consistency"] = float(consistency.detach())
        loss = loss + options.consistency_weight * consistency
    return loss, parts

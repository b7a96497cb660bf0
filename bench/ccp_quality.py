"""The CCP-8 quality table: teacher, students and supervised baselines on Clothing Co-Parsing at 96x64.

    .venv/bin/python bench/ccp_quality.py --ccp CCP96 [--teacher WORKSPACE] [--preset cpu] [--out RUN_DIR] \
        [--rows ...] [--seeds N]

``CCP96`` is the output of ``labelgen data import-ccp --size 96x64`` (made here with ``--src`` if missing). Metric
and splits as in the dataset's DATACARD: mean IoU over the 8 classes from one confusion matrix over the split;
students are selected on ``val`` (best checkpoint) and scored once on ``test``.

``ROWS`` is the table (each row's ``note`` says what it measures) and ``PARTS`` the students' data; ``Runner`` turns
a row into CLI commands (``Runner.command`` builds a row's recorded command without running anything), runs them
with their output in RUN_DIR/logs/, makes each data part once under RUN_DIR/data/ and keeps each finished row in
RUN_DIR/rows/<name>.json, so a killed run resumes where it stopped; a row runs the rows it builds on first.
Prints a markdown table and writes ``--results`` (one object per row: name, trained_on, miou, per_class,
pixel_accuracy, device, seconds, command, selection, ...). ``--rows`` takes row groups (supervised, teacher,
distill) and/or row names. ``--seeds N`` runs each student row named there at N student seeds on the same data, and
each teacher row named there at N head seeds (``train-heads --seed``; the feature choice is shared, an ensemble
combines one seed's heads, the students' data keeps the runner's seed's heads); a row run at several seeds reports
``miou`` = the mean, ``miou_seeds``, ``miou_std`` (see ``aggregate_seeds``). The pretraining row (feature-distill)
scores nothing: its ``miou`` is null and ``pretrain`` holds its feature-loss curve in brief.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from statistics import mean, stdev

import click

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass(frozen=True)
class Preset:
    supervised_steps: int
    full_steps: int
    distill_steps: int
    dreamteacher_steps: int
    finetune_steps: int
    val_every: int
    batch_size: int
    synthetic_n: int  # DDIM samples labelled by the teacher
    ddim_steps: int
    unlabeled_limit: int | None  # real unlabeled photos pseudo-labelled (None = all 1,498)
    head_epochs: int
    sweep_epochs: int  # tune-features: head epochs per candidate
    real_weight: float  # how much more often an annotated-20 image is drawn than a synthetic one
    class_balance: float  # student --class-balance (loss weight ~ class pixel frequency^-P), every student row
    pretrain_steps: int  # feature-distill: DreamTeacher's pretraining on stored teacher features (no labels)


PRESETS = {
    "tiny": Preset(3, 3, 3, 2, 2, 2, 2, 4, 2, 1, 1, 1, 4.0, 0.5, 3),  # the test suite's: plumbing only, on tiny data
    "cpu": Preset(300, 600, 800, 150, 60, 100, 8, 128, 10, 400, 10, 4, 20.0, 0.5, 600),  # docs/benchmarks.md's table
    "gpu": Preset(3000, 6000, 20000, 10000, 300, 1000, 32, 20000, 50, None, 60, 20, 20.0, 0.5, 20000),  # full protocol
}


# ---- the table ----
@dataclass(frozen=True)
class Heads:
    """One set of teacher heads, trained by `labelgen train-heads` in RUN_DIR/ws-<features>-<type>-cb<balance>[-flip]
    (features: "default" = t = 50, 150, 250, every block; "selected" = what `tune-features --val val` chooses)."""
    features: str
    type: str
    class_balance: float
    augment: str = "none"  # train-heads --augment (flip: each annotation also as its mirror image)

    def folder(self, head_type: str | None = None) -> str:
        return f"ws-{self.features}-{head_type or self.type}-cb{self.class_balance:g}" + (
            "" if self.augment == "none" else f"-{self.augment}")


@dataclass(frozen=True)
class Teacher:
    """A teacher row: its heads scored on test (two sets: combined by the Teacher, reused from their rows)."""
    name: str
    note: str
    heads: tuple[Heads, ...]
    trained_on: str
    tta: bool = False  # flip test-time augmentation
    group: str = "teacher"


@dataclass(frozen=True)
class Student:
    """A student row: `student train` on ``data`` (CCP splits and PARTS), then `student eval` on test (a
    feature-distill row trains no segmentation head: nothing is scored, its feature-loss curve is recorded instead).
    ``trained_on`` is formatted with {data} (the parts' descriptions), {n[part]} (a part's samples), {size}, {init}."""
    name: str
    note: str
    data: tuple[str, ...]
    trained_on: str
    mode: str = "label-distill"
    steps: str = "distill_steps"  # the Preset field (or fields joined by "+", summed), times steps_factor
    steps_factor: int = 1
    flags: str = "--tau 4"  # extra `student train` options
    size: str | None = "96x64"  # --image-size (the photos' size); None: the init row's
    teacher: tuple[Heads, ...] = ()  # --teacher: these heads' workspace (dreamteacher)
    features: str | None = None  # --features: this PARTS entry (teacher features stored once)
    init: str | None = None  # --init: this row's student at the same seed, or BEST_DISTILLED (of this run folder)
    arch: str = "unet"
    encoder: str = "resnet18"
    lr: float = 1e-3
    group: str = "distill"


@dataclass(frozen=True)
class StudentTTA:
    """A student row's checkpoint scored again with flip TTA (`student eval --flip`): val without and with it, test."""
    name: str
    note: str
    of: str
    group: str = "distill"


@dataclass(frozen=True)
class Samples:
    """Synthetic samples (`labelgen synthesize`): ``times`` x the preset's synthetic_n, labelled by ``heads``."""
    desc: str
    heads: tuple[Heads, ...]
    times: int = 1
    tta: str = "real"  # synthesize --tta ("all": flip TTA on the samples too)
    seed_base: int | None = None  # None: synthesize's own (1,000,000 + k, k < 2 x synthetic_n)


@dataclass(frozen=True)
class Photos:
    """`unlabeled` photos pseudo-labelled by ``heads`` (`synthesize --from-images`, flip TTA): the preset's first
    unlabeled_limit, or every one."""
    desc: str
    heads: tuple[Heads, ...]
    every: bool = False


@dataclass(frozen=True)
class Features:
    """The teacher's features of the images of parts ``of`` (CCP splits and PARTS), stored once by `labelgen features`
    (the workspace of ``heads``: their generator and levels) and read by every student row with ``features``."""
    heads: tuple[Heads, ...]
    of: tuple[str, ...]


@dataclass(frozen=True)
class Relabelled:
    """Part ``of``'s photos relabelled by row ``student``'s student (`student pseudo-label`, flip TTA), its soft labels
    averaged with ``of``'s at ``teacher_weight``; its data cost counts as ``of``'s."""
    desc: str
    student: str
    of: str
    teacher_weight: float | None = None


CB = (Heads("selected", "pixel-mlp", 0.5),)
BEST = (Heads("selected", "pixel-mlp", 0.5, "flip"),)  # teacher-selected-cb-flip's heads: they label the students' data
CONV = (Heads("selected", "conv", 0.5),)
ENSEMBLE = (*BEST, *CONV)  # teacher-ensemble's: both heads

# the students' data besides the CCP splits: RUN_DIR/data/<name>, each made once. desc: in trained_on ({n}: samples;
# adjacent parts with the same desc are counted together)
PARTS = {
    "synthetic": Samples("{n} DDIM-{ddim} samples", BEST),
    "synthetic-more": Samples("{n} DDIM-{ddim} samples", BEST, times=7, seed_base=2_000_000),
    "synthetic-ensemble": Samples("{n} DDIM-{ddim} samples", ENSEMBLE, tta="all"),
    "pseudo": Photos("{n} pseudo-labelled photos", BEST),
    "pseudo-all": Photos("{n} pseudo-labelled photos (all)", BEST, every=True),  # = pseudo if the preset has no limit
    "pseudo-ensemble": Photos("{n} pseudo-labelled photos", ENSEMBLE),
    "pseudo-r2": Relabelled("{n} photos relabelled by label-distill", "label-distill", of="pseudo"),
    "pseudo-all-r2": Relabelled("{n} photos (all) relabelled by label-distill-long-all-2x + teacher (weight 0.5)",
                                "label-distill-long-all-2x", of="pseudo-all", teacher_weight=0.5),
    # feature-distill's data and label-distill's (pseudo's photos are unlabeled photos, matched by their pixels)
    "features": Features(BEST, of=("unlabeled", "synthetic", "annotated-20")),
}

BEST_DISTILLED = "best-distilled"  # Student.init: the DISTILLED student with the best val mIoU
DISTILL = ("synthetic", "pseudo", "annotated-20")  # label-distill's data
ALL = ("synthetic", "pseudo-all", "annotated-20")
TAU = "{data}; soft labels tau=4"
LONG = "{data}; soft labels tau=4; 4x steps"
ROWS = (
    Student("supervised-20", "smp U-Net (resnet18, from scratch) on annotated-20", ("annotated-20",), "{data}",
            mode="supervised", steps="supervised_steps", flags="", group="supervised"),
    Student("supervised-full", "the same on train-full: the upper bound", ("train-full",), "{data} (upper bound)",
            mode="supervised", steps="full_steps", flags="", group="supervised"),
    Teacher("teacher-pixel-mlp", "the teacher's pixel-MLP ensemble on its default features, trained on annotated-20",
            (Heads("default", "pixel-mlp", 0.0),), "annotated-20 (default features)"),
    Teacher("teacher-selected", "the same on the features chosen on val", (Heads("selected", "pixel-mlp", 0.0),),
            "annotated-20 (features chosen on val)"),
    Teacher("teacher-selected-cb", "+ class-balanced head loss", CB,
            "annotated-20 (selected features, class balance)"),
    Teacher("teacher-selected-cb-tta", "those heads with flip TTA", CB,
            "annotated-20 (selected, class balance, flip TTA)", tta=True),
    Teacher("teacher-conv", "the conv head instead, class-balanced", CONV,
            "annotated-20 (selected features, class balance)"),
    Teacher("teacher-selected-cb-flip", "teacher-selected-cb + mirror images", BEST,
            "annotated-20 + mirror images (selected, class balance)"),
    Teacher("teacher-selected-cb-flip-tta", "those heads with flip TTA", BEST,
            "annotated-20 + mirror images (selected, class balance, flip TTA)", tta=True),
    Teacher("teacher-ensemble", "the heads of -cb-flip and -conv combined", ENSEMBLE,
            "annotated-20 (selected features, class balance; pixel-MLP with mirror images + conv heads)"),
    Teacher("teacher-ensemble-tta", "those heads with flip TTA", ENSEMBLE,
            "annotated-20 (selected features, class balance; pixel-MLP with mirror images + conv heads; flip TTA)",
            tta=True),
    Student("label-distill", "student from synthetic samples + pseudo-labelled photos + annotated-20", DISTILL, TAU),
    Student("label-distill-ens", "the same seeds and photos labelled by teacher-ensemble-tta's heads",
            ("synthetic-ensemble", "pseudo-ensemble", "annotated-20"),
            "{data}, labelled by teacher-ensemble-tta (both heads; flip TTA on samples and photos); soft labels tau=4"),
    Student("label-distill-r2", "round 2: label-distill's student relabels the photos",
            ("synthetic", "pseudo-r2", "annotated-20"), TAU),
    Student("label-distill-strong-aug", "+ crop, flip and strong colour jitter", DISTILL,
            TAU + "; strong augmentation (crop, flip, colour)", flags="--tau 4 --augment-policy strong"),
    Student("label-distill-cons", "+ KL between colour-jittered and plain views (weight 1: the soft-label loss's size)",
            DISTILL, TAU + "; consistency between colour-jittered and plain views (weight 1)",
            flags="--tau 4 --consistency-weight 1"),
    Student("label-distill-uw", "+ samples weighted by the teacher's uncertainty", DISTILL,
            TAU + "; samples weighted by teacher uncertainty", flags="--tau 4 --uncertainty-weighting"),
    Student("label-distill-ema", "+ EMA weights validated and tested (0.99: ~one val interval)", DISTILL,
            TAU + "; weights averaged over steps (EMA, decay 0.99)", flags="--tau 4 --ema-decay 0.99"),
    Student("label-distill-2x", "the student at 2x the photos' size (resnet18's stem divides by 4 at once)", DISTILL,
            TAU + "; student at 2x the photos' size (192x128 input, predictions resized to 96x64)", size="192x128"),
    Student("label-distill-8x-samples", "+ 7x the synthetic samples from other seeds (same photos, steps, weights)",
            ("synthetic", "synthetic-more", "pseudo", "annotated-20"),
            "{data} (label-distill's {n[synthetic]} samples + {n[synthetic-more]} from other seeds); "
            "soft labels tau=4"),
    Student("label-distill-long", "4x the training steps", DISTILL, LONG, steps_factor=4),
    Student("label-distill-long-all", "-long on every unlabeled photo", ALL, LONG, steps_factor=4),
    Student("label-distill-long-all-2x", "-long-all at 2x the photos' size", ALL,
            LONG + "; student at {size} (predictions resized to the photos' size)", steps_factor=4, size="192x128"),
    Student("label-distill-long-all-3x", "-long-all at 3x the photos' size", ALL,
            LONG + "; student at {size} (predictions resized to the photos' size)", steps_factor=4, size="288x192"),
    StudentTTA("label-distill-long-all-tta", "-long-all's checkpoint with flip TTA", of="label-distill-long-all"),
    StudentTTA("label-distill-long-all-3x-tta", "-long-all-3x's with flip TTA", of="label-distill-long-all-3x"),
    Student("label-distill-long-all-2x-r2", "round 2 of -long-all-2x: it and the teacher relabel every photo",
            ("synthetic", "pseudo-all-r2", "annotated-20"), LONG + "; student at {size}", steps_factor=4,
            size="192x128"),
    Student("dreamteacher", "label-distill's data; feature distillation with the teacher in the loop", DISTILL,
            "{data}; features + soft labels tau=4", mode="dreamteacher", steps="dreamteacher_steps", teacher=BEST),
    # DreamTeacher's recipe on stored teacher features (PARTS["features"], made once): pretraining, then fine-tuning
    Student("feature-distill", "pretraining only (DreamTeacher): regress the teacher's stored features of every "
            "unlabeled photo + the synthetic samples, no labels; nothing scored: its feature-loss curve is recorded",
            ("unlabeled", "synthetic"), "{data} (all unlabeled photos); teacher features, no labels",
            mode="feature-distill", steps="pretrain_steps", flags="", features="features"),
    Student("label-distill-fd", "label-distill's command from feature-distill's weights (the same seed's)", DISTILL,
            TAU + "; from {init}'s weights", init="feature-distill"),
    Student("supervised-20-fd", "supervised-20's command from feature-distill's weights: DreamTeacher's fine-tune "
            "on the labels", ("annotated-20",), "{data}; from {init}'s weights", mode="supervised",
            steps="supervised_steps", flags="", init="feature-distill"),
    Student("dreamteacher-stored", "the one-stage mix on label-distill's data and stored features, as many steps as "
            "feature-distill + label-distill-fd", DISTILL, "{data}; stored features + soft labels tau=4",
            mode="dreamteacher", steps="pretrain_steps+distill_steps", features="features"),
    Student("label-distill-convnext", "label-distill with DreamTeacher's student: UPerNet on ConvNeXt-atto (timm, "
            "from scratch)", DISTILL, TAU + "; UPerNet/ConvNeXt-atto student", arch="upernet",
            encoder="tu-convnext_atto"),
    Student("finetuned-20", "the distilled student with the best val mIoU fine-tuned on annotated-20 at its size",
            ("annotated-20",), "{init} + {data}", mode="supervised", steps="finetune_steps", flags="", size=None,
            init=BEST_DISTILLED, lr=2e-4),
)
ROW = {row.name: row for row in ROWS}
ROW_ORDER = tuple(ROW)
ROW_GROUPS = {group: tuple(r.name for r in ROWS if r.group == group) for group in ("supervised", "teacher", "distill")}
# finetuned-20's choice: the students distilled from scratch on their data with finetuned-20's architecture
DISTILLED = tuple(r.name for r in ROWS if isinstance(r, Student) and r.mode in ("label-distill", "dreamteacher")
                  and (r.arch, r.encoder) == ("unet", "resnet18") and not r.init and not r.features)


# ---- the runner ----
def run(command: list[str], log: Path) -> float:
    """Run one CLI step, its output to ``log``; returns seconds. Fails loudly with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-15:]
        raise click.ClickException(f"step failed ({' '.join(command[:4])} ...), see {log}:\n" + "\n".join(tail))
    return time.perf_counter() - start


def labelgen(*args) -> list[str]:
    return [PY, "-m", "labelgen.cli", *map(str, args)]


def student(*args) -> list[str]:
    return [PY, "-m", "labelgen.student.cli", *map(str, args)]


def feature_loss_curve(run_dir: Path) -> dict:
    """What a feature-distill run learned, in brief: its feature MSE (log.csv's ``parts``) at the first and last
    step logged."""
    from labelgen.run import read_log

    logged = [(int(r["step"]), dict(part.split("=") for part in r["parts"].split()))
              for r in read_log(run_dir / "log.csv")]
    mse = [(step, float(parts["feat_mse"])) for step, parts in logged if "feat_mse" in parts]
    if not mse:
        raise click.ClickException(f"{run_dir / 'log.csv'}: no feat_mse logged")
    return {"steps": mse[-1][0], "feat_mse_first": mse[0][1], "feat_mse_last": mse[-1][1]}


def aggregate_seeds(records: list[dict], seeds: list[int]) -> dict:
    """One row from its runs at several student / head seeds (``records`` in ``seeds``' order, the first one's command
    and selection kept): miou = the mean, miou_seeds the per-seed scores, miou_std their sample standard deviation,
    per-class IoU and pixel accuracy the means, seconds the mean per run; a pretraining row (miou None) averages its
    feature-loss summary (``pretrain``; per seed in ``pretrain_seeds``). One record is returned as it is."""
    if len(records) == 1:
        return records[0]
    row = {key: value for key, value in records[0].items() if key != "seed"}
    row.update(seeds=seeds, seconds=round(mean(r["seconds"] for r in records), 1))
    if row["miou"] is None:
        return {**row, "pretrain": {key: mean(r["pretrain"][key] for r in records) for key in row["pretrain"]},
                "pretrain_seeds": [r["pretrain"] for r in records]}
    scores = [r["miou"] for r in records]
    per_class = {}
    for name in row["per_class"]:  # a class absent from the test split and every prediction has no IoU (None)
        values = [r["per_class"][name] for r in records if r["per_class"][name] is not None]
        per_class[name] = mean(values) if values else None
    return {**row, "miou": mean(scores), "miou_std": stdev(scores), "miou_seeds": scores, "per_class": per_class,
            "pixel_accuracy": mean(r["pixel_accuracy"] for r in records)}


class Runner:
    """Builds each row's commands from the table and runs them in ``out`` (finished rows read back from out/rows/).
    A student row runs at ``seeds`` student seeds, seed .. seed + seeds - 1, on the same data: ``seed`` in
    students/<name> and rows/<name>.json, another seed k in students/<name>-seed<k> and rows/<name>-seed<k>.json. A
    teacher row runs at as many head seeds: another seed k's heads in ws-...-seed<k> (a copy of the same ws-<features>),
    its record in rows/<name>-seed<k>.json."""

    def __init__(self, ccp: Path, teacher: Path | None, out: Path, preset: Preset, threads: int, seed: int,
                 seeds: int = 1):
        self.ccp, self.teacher_src, self.out, self.p = ccp, teacher, out, preset
        self.threads, self.seed, self.seeds = threads, seed, seeds

    @cached_property
    def device(self) -> str:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"

    # ---- commands (nothing runs) ----
    def resolve(self, part: str) -> str:
        """The folder a part is made in: without a photo limit, `pseudo` already holds every photo."""
        return "pseudo" if part == "pseudo-all" and not self.p.unlabeled_limit else part

    def part_dir(self, part: str) -> Path:
        part = self.resolve(part)
        return self.out / "data" / part if part in PARTS else self.ccp / part

    def workspace_dir(self, heads: tuple[Heads, ...], seed: int | None = None) -> Path:
        """These heads' workspace at a head seed (default: the runner's; another seed k: the folder + -seed<k>)."""
        seed = self.seed if seed is None else seed
        return self.out / (heads[0].folder("ensemble" if len(heads) > 1 else None)
                           + ("" if seed == self.seed else f"-seed{seed}"))

    def train_heads_cmd(self, heads: Heads, seed: int | None = None) -> list[str]:
        seed = self.seed if seed is None else seed
        return labelgen("train-heads", "-w", self.workspace_dir((heads,), seed), "--epochs", self.p.head_epochs,
                        "--seed", seed, "--class-balance", heads.class_balance, "--augment", heads.augment)

    def run_dir(self, name: str, seed: int | None = None) -> Path:
        """A student row's run folder at a student seed (default: the runner's)."""
        seed = self.seed if seed is None else seed
        return self.out / "students" / (name if seed == self.seed else f"{name}-seed{seed}")

    def student_cmd(self, row: Student, init: str | None = None, seed: int | None = None) -> list[str]:
        """``init``: finetuned-20's chosen student (its runner-seed run); a row's own ``init`` row: at the same seed."""
        seed = self.seed if seed is None else seed
        init_dir = None
        if init:
            init_dir = self.run_dir(init)
        elif row.init and row.init != BEST_DISTILLED:
            init_dir = self.run_dir(row.init, seed)
        pretrain = row.mode == "feature-distill"  # no segmentation head: nothing to validate or class-balance
        steps = row.steps_factor * sum(getattr(self.p, field) for field in row.steps.split("+"))
        cmd = student("train", "--mode", row.mode, "--out", self.run_dir(row.name, seed),
                      *(() if pretrain else ("--val", self.ccp / "val", "--val-every", self.p.val_every)),
                      "--max-steps", steps, "--batch-size", self.p.batch_size, "--image-size",
                      row.size or ROW[init].size, "--arch", row.arch, "--encoder", row.encoder, "--seed", seed,
                      "--threads", self.threads, "--lr", row.lr,
                      *(() if pretrain else ("--class-balance", self.p.class_balance)), *row.flags.split())
        if row.teacher:
            cmd += ["--teacher", str(self.workspace_dir(row.teacher))]
        if row.features:
            cmd += ["--features", str(self.part_dir(row.features))]
        for part in row.data:
            cmd += ["--data", str(self.part_dir(part))]
        if len(row.data) > 1:
            weights = (self.p.real_weight if part == "annotated-20" else 1 for part in row.data)
            cmd += ["--data-weights", ",".join(f"{w:g}" for w in weights)]
        return cmd + (["--init", str(init_dir)] if init_dir else [])

    def tta_cmds(self, row: StudentTTA) -> list[tuple[str, list[str]]]:
        """(folder, `student eval`) on val without and with flip TTA (the choice), then on test with it."""
        run_dir = self.out / "students" / row.of
        return [(folder, student("eval", "--checkpoint", run_dir, "--data", self.ccp / split, "--out", run_dir / folder,
                                 "--flip" if flip else "--no-flip"))
                for split, folder, flip in (("val", "val", False), ("val", "val-tta", True),
                                            ("test", "test-tta", True))]

    def command(self, name: str, init: str | None = None, seed: int | None = None) -> str:
        """The command a row records (``init``: finetuned-20's chosen student) at a student / head seed (default: the
        runner's), built without running anything."""
        row = ROW[name]
        if isinstance(row, Student):
            return " ".join(self.student_cmd(row, init, seed)[2:])
        if isinstance(row, StudentTTA):
            return " ".join(self.tta_cmds(row)[-1][1][2:])
        steps = []
        for heads in row.heads:
            cmd = " ".join(self.train_heads_cmd(heads, seed)[2:])
            if len(row.heads) > 1 and heads.type != "pixel-mlp":  # its type is set in the workspace, not an option
                cmd = cmd.replace("train-heads", f"train-heads --type {heads.type}", 1)
            steps.append(cmd)
        if row.tta or len(row.heads) > 1:
            steps.append("evaluate_teacher" + (" --flip" if row.tta else ""))
        return " ; ".join(steps)

    # ---- rows ----
    def record_path(self, name: str, seed: int) -> Path:
        return self.out / "rows" / (f"{name}.json" if seed == self.seed else f"{name}-seed{seed}.json")

    def row_done(self, name: str) -> dict | None:
        """A row as reported, read back from out/rows/: a student row run at several seeds is their aggregate."""
        if not (path := self.record_path(name, self.seed)).is_file():
            return None
        records = {self.seed: json.loads(path.read_text())}
        for other in sorted((self.out / "rows").glob(f"{name}-seed*.json")):
            if match := re.fullmatch(rf"{re.escape(name)}-seed(\d+)\.json", other.name):
                records[int(match.group(1))] = json.loads(other.read_text())
        return aggregate_seeds(list(records.values()), list(records))

    def row(self, name: str) -> dict:
        """Run (or read back) one row by name, a student or teacher row at the runner's seeds; the row as reported."""
        for seed in range(self.seed, self.seed + (self.seeds if isinstance(ROW[name], (Student, Teacher)) else 1)):
            self.run_once(name, seed)
        return self.row_done(name)

    def run_once(self, name: str, seed: int | None = None) -> dict:
        """Run (or read back) one row at one student / head seed (default: the runner's); that run's record."""
        from labelgen.data.io import atomic_write_json

        seed = self.seed if seed is None else seed
        path = self.record_path(name, seed)
        if path.is_file():
            return json.loads(path.read_text())
        spec = ROW[name]
        if isinstance(spec, Student):
            row = self.student_row(spec, seed)
        elif isinstance(spec, Teacher):
            row = self.teacher_row(spec, seed)
        else:
            row = self.tta_row(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, row)
        return row

    def teacher_row(self, row: Teacher, seed: int | None = None) -> dict:
        """Train (or reuse) the row's heads at one head seed (default: the runner's) and score them on test."""
        from labelgen.training.evaluate_teacher import evaluate_teacher

        seed = self.seed if seed is None else seed
        workspace, seconds = self.workspace(row.heads, seed)
        from labelgen.workspace import Workspace

        ws = Workspace(workspace)
        result = evaluate_teacher(ws.teacher(), self.ccp / "test", progress=False, flip=row.tta,
                                  store=ws.feature_store)
        scores = {"name": row.name, "trained_on": row.trained_on, "miou": result["miou"],
                  "per_class": result["per_class_iou"], "pixel_accuracy": result["pixel_accuracy"],
                  "device": self.device, "seconds": round(seconds + result["seconds"], 1)}
        seeded = {} if seed == self.seed else {"seed": seed}
        if len(row.heads) > 1:
            return {**scores, "heads": result["heads"], "command": self.command(row.name, seed=seed),
                    "selection": "heads of teacher-selected-cb-flip and teacher-conv reused (seconds: evaluation "
                                 "only); every member averaged (labelgen.teacher.predict_heads)", **seeded}
        return {**scores, "command": self.command(row.name, seed=seed),
                "selection": "features: " + ("tune-features on val" if row.heads[0].features == "selected" else
                                             "default") + f"; heads: fixed {self.p.head_epochs} epochs", **seeded}

    def student_row(self, row: Student, seed: int) -> dict:
        """Train + test one student at one seed (its predictions resized back to the photos' 96x64 when scored); a
        pretraining row is not scored: its feature-loss curve is recorded instead (miou None, ``pretrain``)."""
        init, record = None, {}
        if row.init == BEST_DISTILLED:
            init, record = self.best_distilled()
        elif row.init:
            self.run_once(row.init, seed)  # the pretraining at the same seed
        counts = {part: self.part(part) for part in row.data}
        if row.features:
            self.part(row.features)
        if row.teacher:
            self.workspace(row.teacher)
        run_dir, suffix = self.run_dir(row.name, seed), "" if seed == self.seed else f"-seed{seed}"
        cmd = self.student_cmd(row, init, seed)
        seconds = run(cmd, self.out / "logs" / f"{row.name}{suffix}.log")
        done = {"name": row.name, "trained_on": self.trained_on(row, counts, init or row.init)}
        data = {**self.data_seconds(row.data + ((row.features,) if row.features else ())), **record,
                **({} if seed == self.seed else {"seed": seed})}
        if row.mode == "feature-distill":
            return {**done, "miou": None, "per_class": None, "pixel_accuracy": None, "device": self.device,
                    "seconds": round(seconds, 1), "command": " ".join(cmd[2:]),
                    "selection": "pretraining only: no segmentation head trained, nothing scored; its last weights "
                                 "initialise the rows built on it", "pretrain": feature_loss_curve(run_dir), **data}
        seconds += run(student("eval", "--checkpoint", run_dir, "--data", self.ccp / "test", "--out", run_dir / "test"),
                       self.out / "logs" / f"{row.name}{suffix}-eval.log")
        scores = json.loads((run_dir / "test" / "scores.json").read_text())
        best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else {}
        return {
            **done, "miou": scores["miou"],
            "per_class": scores["per_class"], "pixel_accuracy": scores["pixel_accuracy"], "device": self.device,
            "seconds": round(seconds, 1), "command": " ".join(cmd[2:]),
            "selection": f"best val mIoU {best.get('miou', float('nan')):.4f} at step {best.get('step', '?')}",
            **data,
        }

    def best_distilled(self) -> tuple[str, dict]:
        """The DISTILLED row whose student (trained in this run folder at the runner's seed) has the best val mIoU,
        and its record."""
        val = {}
        for name in DISTILLED:
            self.run_once(name)
            if (best := self.run_dir(name) / "best.json").is_file():
                val[name] = json.loads(best.read_text())["miou"]
        if not val:
            raise click.ClickException(f"finetuned-20: no distilled student checkpoint in {self.out / 'students'}")
        name = max(val, key=val.get)
        return name, {"fine_tuned": name, "fine_tuned_val_miou": val[name]}

    def trained_on(self, row: Student, counts: dict[str, int | None], init: str | None) -> str:
        texts: list[list] = []  # [desc, samples]
        for part in row.data:
            desc = PARTS[self.resolve(part)].desc if counts[part] is not None else part
            if texts and texts[-1][0] == desc and counts[part] is not None:
                texts[-1][1] += counts[part]
            else:
                texts.append([desc, counts[part]])
        data = " + ".join(desc.format(n=n, ddim=self.p.ddim_steps) for desc, n in texts)
        return row.trained_on.format(data=data, n=counts, size=row.size, init=init)

    def tta_row(self, row: StudentTTA) -> dict:
        """The checkpoint of row ``row.of`` (trained in this run folder) scored with flip TTA."""
        base_row = self.run_once(row.of)
        if not (self.out / "students" / row.of / "student_config.json").is_file():
            raise click.ClickException(f"{row.name}: {row.of}'s checkpoint is not in {self.out / 'students'} (its row "
                                       f"was read back); remove rows/{row.of}.json to train it here")
        seconds, scores = 0.0, {}
        for folder, cmd in self.tta_cmds(row):
            seconds += run(cmd, self.out / "logs" / f"{row.name}-{folder}.log")
            scores[folder] = json.loads((self.out / "students" / row.of / folder / "scores.json").read_text())
        test = scores["test-tta"]
        return {
            "name": row.name, "trained_on": f"{row.of}'s checkpoint; flip TTA", "miou": test["miou"],
            "per_class": test["per_class"], "pixel_accuracy": test["pixel_accuracy"], "device": self.device,
            "seconds": round(seconds, 1), "command": self.command(row.name),
            "selection": f"{row.of}'s checkpoint (seconds: evaluation only); val mIoU {scores['val']['miou']:.4f} "
                         f"without TTA, {scores['val-tta']['miou']:.4f} with it",
            "val_miou": {"no_tta": scores["val"]["miou"], "tta": scores["val-tta"]["miou"]},
            "tta_of": row.of, "tta_of_test_miou": base_row["miou"],
        }

    # ---- the students' data ----
    def part(self, name: str) -> int | None:
        """Make RUN_DIR/data/<part> if missing (its seconds kept in data/seconds.json, so a resumed run still
        reports them); its sample count (None: a CCP split)."""
        from labelgen.data.io import atomic_write_json

        name = self.resolve(name)
        if name not in PARTS:
            return None
        dest = self.part_dir(name)
        if not (dest / "manifest.json").is_file():
            seconds = self.make_part(PARTS[name], dest)  # (may make other parts first)
            atomic_write_json(self.out / "data" / "seconds.json", {**self.timing(), name: seconds})
        return json.loads((dest / "manifest.json").read_text())["num_samples"]

    def make_part(self, part: Samples | Photos | Features | Relabelled, dest: Path) -> float:
        logs = self.out / "logs"
        if isinstance(part, Features):
            data = []
            for name in part.of:
                self.part(name)
                data += ["--data", self.part_dir(name)]
            return run(labelgen("features", "-w", self.workspace(part.heads)[0], *data, "--out", dest),
                       logs / f"{dest.name}.log")
        if isinstance(part, Samples):
            cmd = labelgen("synthesize", "-w", self.workspace(part.heads)[0], "--n", part.times * self.p.synthetic_n,
                           "--out", dest, "--soft-labels", "uint8", "--drop-uncertain", 0.1, "--shard-size", 500,
                           "--tta", part.tta)
            return run(cmd + ([] if part.seed_base is None else ["--seed", str(part.seed_base)]),
                       logs / f"{dest.name}.log")
        if isinstance(part, Photos):
            limit = None if part.every else self.p.unlabeled_limit
            cmd = labelgen("synthesize", "-w", self.workspace(part.heads)[0], "--from-images",
                           self.ccp / "unlabeled" / "images", "--out", dest, "--soft-labels", "uint8",
                           "--shard-size", 500)
            return run(cmd + (["--n", str(limit)] if limit else []), logs / f"{dest.name}-label.log")
        self.run_once(part.student)
        self.part(part.of)
        shutil.rmtree(dest, ignore_errors=True)
        mix = () if part.teacher_weight is None else ("--teacher-shards", self.part_dir(part.of), "--teacher-weight",
                                                      part.teacher_weight)
        return run(student("pseudo-label", "--checkpoint", self.out / "students" / part.student, "--images",
                           self.photos(part.of), "--out", dest, *mix), logs / f"pseudo-label-{dest.name}.log")

    def photos(self, part: str) -> Path:
        """The `unlabeled` photos a Photos part labels: all of them, or a copy of the preset's first few."""
        images = self.ccp / "unlabeled" / "images"
        if PARTS[self.resolve(part)].every or not self.p.unlabeled_limit:
            return images
        subset = self.out / "data" / "unlabeled-subset"
        if not subset.is_dir():
            subset.mkdir(parents=True)
            for path in sorted(images.glob("*.png"))[:self.p.unlabeled_limit]:
                shutil.copy(path, subset / path.name)
        return subset

    def timing(self) -> dict:
        path = self.out / "data" / "seconds.json"  # how long each part took when it was made
        return json.loads(path.read_text()) if path.is_file() else {}

    def data_seconds(self, parts: tuple[str, ...]) -> dict:
        """{"data_seconds": what these parts took} ({} for CCP splits only, or a part made before its timing was
        recorded)."""
        names = [self.resolve(p) for p in parts if self.resolve(p) in PARTS]
        names = [self.resolve(PARTS[n].of) if isinstance(PARTS[n], Relabelled) else n for n in names]
        timing = self.timing()
        return {"data_seconds": round(sum(timing[n] for n in names), 1)} if names and set(names) <= set(timing) else {}

    # ---- teacher workspaces ----
    def workspace(self, heads: tuple[Heads, ...], seed: int | None = None) -> tuple[Path, float]:
        """(workspace with these heads trained at a head seed (default: the runner's; the students' data always uses
        the runner's), seconds training them); two sets: the first's workspace with the second's heads of the same
        seed copied into heads/<type>/ (reused, not retrained), combined by the Teacher."""
        from labelgen.heads import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME

        if len(heads) == 1:
            return self.train_heads(heads[0], seed)
        (first, _), (second, _) = (self.train_heads(h, seed) for h in heads)
        dest = self.workspace_dir(heads, seed)
        if not (dest / "heads" / heads[1].type / HEAD_CONFIG_NAME).is_file():
            partial = dest.with_name(dest.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(first, partial)  # its heads (W/heads/) and feature cache
            (partial / "heads" / heads[1].type).mkdir()
            for file in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME):
                shutil.copy2(second / "heads" / file, partial / "heads" / heads[1].type / file)
            shutil.rmtree(dest, ignore_errors=True)
            partial.rename(dest)
        return dest, 0.0

    def train_heads(self, heads: Heads, seed: int | None = None) -> tuple[Path, float]:
        """A copy of ws-<features> (its feature cache too; the feature choice is shared by every head seed) with these
        heads trained at a head seed (default: the runner's)."""
        from labelgen.workspace import Workspace

        dest = self.workspace_dir((heads,), seed)
        if (dest / "heads" / "head_config.json").is_file():
            return dest, 0.0
        source = self.features_workspace(heads.features)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest)
        ws = Workspace(dest)
        if ws.config.head.get("type") != heads.type:
            ws.config.head = {"type": heads.type}
            ws.save_config()
        return dest, run(self.train_heads_cmd(heads, seed), self.out / "logs" / f"{dest.name}.log")

    def features_workspace(self, features: str) -> Path:
        """ws-default: the teacher's default features (t = 50, 150, 250, every block); ws-selected: the features
        `labelgen tune-features --val val` chooses (its table in ws-selected/feature_sweep.json)."""
        from labelgen.feature_selection import SWEEP_NAME
        from labelgen.workspace import Workspace, load_workspace_generator

        dest = self.out / f"ws-{features}"
        done = (dest / "workspace.json").is_file() and (features == "default" or (dest / SWEEP_NAME).is_file())
        if not done:
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(self.base_workspace(), dest)
            ws = Workspace(dest)
            if ws.config.backend in ("ddpm", "stable-diffusion"):
                ws.config.generator_options.update(timesteps=[50, 150, 250], feature_layers=None)
                ws.config.timesteps, ws.config.feature_layers = [50, 150, 250], None
                generator = load_workspace_generator(ws.config.backend, ws.checkpoint_path(),
                                                     ws.config.generator_options)
                ws.config.feature_channels = [int(c) for c in generator.feature_channels]
                ws.save_config()
            if features == "selected":
                run(labelgen("tune-features", "-w", dest, "--val", self.ccp / "val", "--epochs", self.p.sweep_epochs,
                             "--timesteps", "25,50,100,200,400", "--seed", self.seed),
                    self.out / "logs" / "tune-features.log")
        return dest

    def base_workspace(self) -> Path:
        """A copy of the teacher workspace (the embedded default, or --teacher), DDIM steps of the preset."""
        from labelgen.workspace import Workspace

        dest = self.out / "ws-base"
        if not (dest / "workspace.json").is_file():
            partial = self.out / "ws-base.partial"
            shutil.rmtree(partial, ignore_errors=True)
            if self.teacher_src is None:
                from labelgen.default_teacher import copy_default_workspace

                copy_default_workspace(partial)
            else:
                shutil.copytree(self.teacher_src, partial)
                ws = Workspace(partial)
                if ws.config.checkpoint and not Path(ws.config.checkpoint).is_absolute():
                    ws.config.checkpoint = str((self.teacher_src / ws.config.checkpoint).resolve())
                    ws.save_config()
            ws = Workspace(partial)
            if ws.config.backend in ("ddpm", "stable-diffusion"):  # sampling cost of the synthetic rows
                ws.config.generator_options["ddim_steps"] = self.p.ddim_steps
            ws.save_config()
            shutil.rmtree(ws.heads_dir, ignore_errors=True)  # every row trains its own heads
            partial.rename(dest)
        return dest


def miou_cell(row: dict) -> str:
    """mIoU; over several seeds mean ± std (n); a pretraining row's feature MSE from its first to its last step."""
    if row["miou"] is None:
        pretrain = row["pretrain"]
        return f"n/a (pretraining: feature MSE {pretrain['feat_mse_first']:.3g} -> {pretrain['feat_mse_last']:.3g})"
    if "miou_seeds" in row:
        return f"**{row['miou']:.3f} ± {row['miou_std']:.3f} ({len(row['miou_seeds'])})**"
    return f"**{row['miou']:.3f}**"


def markdown(rows: list[dict]) -> str:
    classes = list(next(r["per_class"] for r in rows if r["per_class"] is not None))
    head = "| row | trained on | mIoU | " + " | ".join(classes) + " | seconds | device |"
    lines = [head, "|" + "---|" * (len(classes) + 5)]
    for r in rows:
        per = " | ".join("n/a" if r["per_class"] is None or r["per_class"][c] is None else f"{r['per_class'][c]:.2f}"
                         for c in classes)
        lines.append(f"| {r['name']} | {r['trained_on']} | {miou_cell(r)} | {per} | {r['seconds']:.0f} | {r['device']} |")
    return "\n".join(lines)


@click.command(context_settings={"show_default": True})
@click.option("--ccp", type=click.Path(path_type=Path), required=True, help="CCP imported at 96x64 (project format).")
@click.option("--src", type=click.Path(path_type=Path), default=None, help="Raw CCP layout, to import --ccp if missing.")
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="Teacher workspace (default: the embedded default teacher).")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="cpu", help="Training budget.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "bench" / "runs" / "ccp_quality",
              help="Working folder (resumable).")
@click.option("--results", type=click.Path(path_type=Path), default=ROOT / "bench" / "results" / "ccp_quality.json",
              help="Where the table's JSON goes.")
@click.option("--threads", type=int, default=1, help="Torch threads per training process.")
@click.option("--seed", type=int, default=0)
@click.option("--seeds", type=click.IntRange(min=1), default=1,
              help="Student seeds per student row and head seeds per teacher row run now: --seed .. --seed + N - 1 "
                   "on the same data (a row built on the pretraining row starts from its run at the same seed; "
                   "finetuned-20 from the student chosen at --seed; the ensembles combine the heads of one seed; the "
                   "students' data is labelled by --seed's heads); reported as mean ± std.")
@click.option("--rows", "row_groups", type=str, default=",".join(ROW_GROUPS),
              help="Row groups and/or row names to run now (finished rows of others are read back from --out).")
def main(ccp: Path, src: Path | None, teacher: Path | None, preset: str, out: Path, results: Path, threads: int,
         seed: int, seeds: int, row_groups: str):
    """Run (or resume) every row, print the markdown table, write the JSON."""
    from labelgen.data.io import atomic_write_json

    if not (ccp / "classes.json").is_file():
        if src is None:
            raise click.ClickException(f"{ccp}: not an imported CCP folder (pass --src to import it)")
        run(labelgen("data", "import-ccp", "--src", src, "--out", ccp, "--size", "96x64"), out / "logs" / "import.log")
    start = time.perf_counter()
    runner = Runner(ccp, teacher, out, PRESETS[preset], threads, seed, seeds)
    names = []
    for item in (g.strip() for g in row_groups.split(",") if g.strip()):
        if item not in ROW_GROUPS and item not in ROW:
            raise click.BadParameter(f"{item!r}: row groups are {', '.join(ROW_GROUPS)}; rows are {', '.join(ROW)}",
                                     param_hint="--rows")
        names += [n for n in ROW_GROUPS.get(item, (item,)) if n not in names]
    for name in names:
        runner.row(name)
    rows = [r for name in ROW_ORDER if (r := runner.row_done(name))]
    for r in rows:
        r["preset"] = preset
    atomic_write_json(results, rows)
    click.echo(markdown(rows))
    click.echo(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s -> {results}")


if __name__ == "__main__":
    main()

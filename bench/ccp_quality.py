"""The CCP-8 quality table: teacher, students and supervised baselines on Clothing Co-Parsing at 96x64.

    .venv/bin/python bench/ccp_quality.py --ccp CCP96 [--teacher WORKSPACE] [--preset cpu] [--out RUN_DIR]

``CCP96`` is the output of ``labelgen data import-ccp --size 96x64`` (made here with ``--src`` if
missing). Metric and splits as in the dataset's DATACARD: mean IoU over the 8 classes from one
confusion matrix over the split; students are selected on ``val`` (best checkpoint) and reported once
on ``test``. Rows:

    supervised-20        smp U-Net (resnet18, scratch) on annotated-20
    supervised-full      same on train-full (upper bound)
    teacher-pixel-mlp    the teacher's pixel-MLP ensemble on its default features (t = 50, 150, 250, every
                         decoder block), trained on annotated-20
    teacher-selected     the same on the features `labelgen tune-features --val val` chose
    teacher-selected-cb  + class-balanced head loss (train-heads --class-balance)
    teacher-selected-cb-tta  the same heads with horizontal-flip test-time augmentation
    teacher-selected-cb-flip  + flip augmentation of the heads' training set (train-heads --augment flip: each
                         annotation also as its mirror image); the rows above train with --augment none
    teacher-selected-cb-flip-tta  the same heads with flip test-time augmentation
    teacher-conv         the conv interpreter on the selected features, class-balanced
    teacher-ensemble     both heads combined by the Teacher (every member of the pixel-MLP and conv heads of
                         teacher-selected-cb-flip and teacher-conv, reused, not retrained: W/heads/ + W/heads/conv/, as
                         `labelgen train-heads --type conv` makes them)
    teacher-ensemble-tta the same heads with flip test-time augmentation
    label-distill        student from synthetic samples + pseudo-labelled `unlabeled` (flip TTA) + annotated-20,
                         soft labels at tau=4, from the pixel-MLP teacher of teacher-selected-cb-flip
    label-distill-ens    label-distill on its data made again with teacher-ensemble-tta's heads labelling it (both
                         heads; flip TTA on the synthetic samples too): the same sample seeds and photos
    label-distill-r2     round 2: that student relabels the `unlabeled` photos (`student pseudo-label`, flip TTA)
                         and a fresh student distils from them + the synthetic samples + annotated-20
    label-distill-strong-aug  label-distill + `--augment-policy strong` (crop, flip, strong colour jitter)
    label-distill-cons   label-distill + `--consistency-weight 1` (KL between the predictions on the colour-jittered and the
                         plain view of each sample, every pixel)
    label-distill-uw     label-distill + `--uncertainty-weighting` (samples weighted by the teacher's uncertainty)
    label-distill-ema    label-distill + `--ema-decay 0.99` (the moving average of the weights is validated and tested)
    label-distill-2x     label-distill + `--image-size 192x128`: the student at twice the photos' size
    label-distill-8x-samples  label-distill with 8x the synthetic samples: its own + 7x as many from other seeds,
                         the same photos, steps and per-sample weights (synthetic data's share of the draws grows;
                         cpu preset: 896 added, ~45 min here; gpu preset: 140,000 added, the mission's scale, its GPU
                         time not measured)
    label-distill-long   label-distill with 4x the training steps (same data)
    label-distill-long-all  label-distill-long on every `unlabeled` photo pseudo-labelled (1,498; the CPU preset's
                         other rows use the first 400); the same data as label-distill-long where the preset has no limit
    label-distill-long-all-2x  label-distill-long-all with the student at 192x128 (the -2x and -long-all levers combined)
    label-distill-long-all-2x-r2  round 2 of it: that student and the teacher (soft labels averaged, even weights)
                         relabel every `unlabeled` photo and a fresh student is trained as label-distill-long-all-2x
    label-distill-long-all-3x  label-distill-long-all with the student at 288x192 (3x the photos' size)
    label-distill-long-all-tta, label-distill-long-all-3x-tta  those rows' checkpoints scored with flip test-time
                         augmentation (`student eval --flip`: the mean of the photo's and its mirror image's
                         probabilities); `val` without and with it recorded beside the test score
    dreamteacher         the same data as label-distill, feature distillation (teacher in the loop) + labels
    finetuned-20         the distilled student with the best val mIoU, fine-tuned on annotated-20 at its size

Prints a markdown table and writes ``bench/results/ccp_quality.json`` (one object per row: name,
miou, per_class, device, seconds, trained_on, command). Every step is a CLI command (recorded per row),
and finished rows are kept in RUN_DIR/rows/, so a killed run resumes where it stopped. ``--rows`` takes row
groups (supervised, teacher, distill) and/or row names (a row runs the rows it builds on first, if not done).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STUDENT_SIZE = "96x64"  # `student train --image-size` of every student row (the photos' size) but the -2x / -3x rows
STUDENT_SIZE_2X = "192x128"  # the -2x rows: twice the photos' size
STUDENT_SIZE_3X = "288x192"  # the -3x row: three times (on val, 800 steps: 0.432 vs 0.421 at 2x; docs/student.md)


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


PRESETS = {
    # the test suite's version: minutes -> seconds, on tiny data
    "tiny": Preset(3, 3, 3, 2, 2, 2, 2, 4, 2, 1, 1, 1, 4.0, 0.5),
    # the 2-core CPU machine in one sitting: 6,382 s measured for the first 14 rows, other jobs beside it; the two
    # -long rows added 1,603 s of training + 595 s of labelling every unlabeled photo (2026-12-01)
    # the two -long-all-2x rows ~1,700 s each, -long-all-3x 3,258 s (2026-12-02): the rows' seconds in the JSON sum
    # to 4.3 h, 4.7 h with the students' data, for every row from scratch; later rows were added in sittings of
    # their own (--rows); label-distill-ens adds a dataset of its own (1,520 s with the t = 25, 50, 100 heads of the
    # seventh sitting, whose labelling ran ~6x slower a photo than with t = 25)
    # (the 16.5 M GPU-trained default is 3.3x slower per image on CPU than the old 4.1 M one: fewer images)
    "cpu": Preset(300, 600, 800, 150, 60, 100, 8, 128, 10, 400, 10, 4, 20.0, 0.5),
    # the full protocol for a GPU machine
    "gpu": Preset(3000, 6000, 20000, 10000, 300, 1000, 32, 20000, 50, None, 60, 20, 20.0, 0.5),
}


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


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


class Bench:
    def __init__(self, ccp: Path, teacher: Path, out: Path, preset: Preset, threads: int, seed: int):
        self.ccp, self.teacher_src, self.out, self.p = ccp, teacher, out, preset
        self.threads, self.seed = threads, seed
        self.device = device_name()
        (out / "rows").mkdir(parents=True, exist_ok=True)

    # ---- shared pieces ----
    def row_done(self, name: str) -> dict | None:
        path = self.out / "rows" / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def save_row(self, row: dict) -> dict:
        from labelgen.data.io import atomic_write_json

        atomic_write_json(self.out / "rows" / f"{row['name']}.json", row)
        return row

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
                cmd = labelgen("tune-features", "-w", dest, "--val", self.ccp / "val", "--epochs", self.p.sweep_epochs,
                               "--timesteps", "25,50,100,200,400", "--seed", self.seed)
                self.sweep_seconds = run(cmd, self.out / "logs" / "tune-features.log")
        return dest

    def heads_workspace(self, features: str, head_type: str, class_balance: float, augment: str = "none"
                        ) -> tuple[Path, float, str]:
        """(workspace with trained heads, seconds, command): a copy of ws-<features> (its feature cache too)."""
        from labelgen.workspace import Workspace

        dest = self.out / (f"ws-{features}-{head_type}-cb{class_balance:g}" + ("" if augment == "none" else f"-{augment}"))
        cmd = labelgen("train-heads", "-w", dest, "--epochs", self.p.head_epochs, "--seed", self.seed,
                       "--class-balance", class_balance, "--augment", augment)
        if (dest / "heads" / "head_config.json").is_file():
            return dest, 0.0, " ".join(map(str, cmd[2:]))
        source = self.features_workspace(features)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest)
        ws = Workspace(dest)
        if ws.config.head.get("type") != head_type:
            ws.config.head = {"type": head_type}
            ws.save_config()
        seconds = run(cmd, self.out / "logs" / f"{dest.name}.log")
        return dest, seconds, " ".join(map(str, cmd[2:]))

    def teacher_row(self, name: str, features: str, head_type: str, class_balance: float, augment: str, flip: bool,
                    trained_on: str) -> dict:
        from labelgen.training.evaluate_teacher import evaluate_teacher

        if row := self.row_done(name):
            return row
        ws_dir, seconds, command = self.heads_workspace(features, head_type, class_balance, augment)
        result = evaluate_teacher(ws_dir, self.ccp / "test", progress=False, flip=flip, cache=True)
        return self.save_row({
            "name": name, "trained_on": trained_on, "miou": result["miou"],
            "per_class": result["per_class_iou"], "pixel_accuracy": result["pixel_accuracy"],
            "device": self.device, "seconds": round(seconds + result["seconds"], 1),
            "command": command + (" ; evaluate_teacher --flip" if flip else ""),
            "selection": "features: " + ("tune-features on val" if features == "selected" else "default")
                         + f"; heads: fixed {self.p.head_epochs} epochs",
        })

    def ensemble_workspace(self) -> tuple[Path, str]:
        """(W, the commands that trained its heads): the heads of teacher-selected-cb-flip (pixel-MLP, W/heads/) and
        teacher-conv (W/heads/conv/) in one workspace (copied, not retrained), combined by the Teacher."""
        from labelgen.heads import HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME

        (mlp_ws, _, mlp_cmd), (conv_ws, _, conv_cmd) = (self.heads_workspace(*spec) for spec in ENSEMBLE_HEADS)
        dest = self.out / "ws-selected-ensemble-cb0.5-flip"
        if not (dest / "heads" / "conv" / HEAD_CONFIG_NAME).is_file():
            partial = dest.with_name(dest.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(mlp_ws, partial)  # its heads (W/heads/) and feature cache
            (partial / "heads" / "conv").mkdir()
            for file in (HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME):
                shutil.copy2(conv_ws / "heads" / file, partial / "heads" / "conv" / file)
            shutil.rmtree(dest, ignore_errors=True)
            partial.rename(dest)
        return dest, f"{mlp_cmd} ; {conv_cmd.replace('train-heads', 'train-heads --type conv', 1)}"

    def ensemble_row(self, flip: bool = False) -> dict:
        """teacher-ensemble: both heads of ensemble_workspace() (``flip``: teacher-ensemble-tta, the same heads with
        flip test-time augmentation)."""
        from labelgen.training.evaluate_teacher import evaluate_teacher

        name = "teacher-ensemble-tta" if flip else "teacher-ensemble"
        if row := self.row_done(name):
            return row
        dest, commands = self.ensemble_workspace()
        result = evaluate_teacher(dest, self.ccp / "test", progress=False, flip=flip, cache=True)
        return self.save_row({
            "name": name, "trained_on": "annotated-20 (selected features, class balance; pixel-MLP with mirror images + conv heads"
                                        + ("; flip TTA)" if flip else ")"),
            "miou": result["miou"], "per_class": result["per_class_iou"], "pixel_accuracy": result["pixel_accuracy"],
            "device": self.device, "seconds": round(result["seconds"], 1), "heads": result["heads"],
            "command": f"{commands} ; evaluate_teacher" + (" --flip" if flip else ""),
            "selection": "heads of teacher-selected-cb-flip and teacher-conv reused (seconds: evaluation only); "
                         "every member averaged (labelgen.teacher.predict_heads)",
        })

    def student_row(self, name: str, mode: str, data: list[tuple[Path, float]], steps: int, trained_on: str,
                    extra: tuple = (), init: Path | None = None, lr: float = 1e-3, record: dict | None = None,
                    image_size: str = STUDENT_SIZE) -> dict:
        """Train + test one student row (``record``: extra fields saved with it; ``image_size``: the student's
        training and inference size, its predictions resized back to the photos' 96x64 when scored)."""
        if row := self.row_done(name):
            return row
        run_dir = self.out / "students" / name
        cmd = student("train", "--mode", mode, "--out", run_dir, "--val", self.ccp / "val",
                      "--val-every", self.p.val_every, "--max-steps", steps, "--batch-size", self.p.batch_size,
                      "--image-size", image_size, "--arch", "unet", "--encoder", "resnet18", "--seed", self.seed,
                      "--threads", self.threads, "--lr", lr, "--class-balance", self.p.class_balance, *extra)
        for path, _ in data:
            cmd += ["--data", str(path)]
        if len(data) > 1:
            cmd += ["--data-weights", ",".join(f"{w:g}" for _, w in data)]
        if init is not None:
            cmd += ["--init", str(init)]
        seconds = run(cmd, self.out / "logs" / f"{name}.log")
        seconds += run(student("eval", "--checkpoint", run_dir, "--data", self.ccp / "test", "--out", run_dir / "test"),
                       self.out / "logs" / f"{name}-eval.log")
        scores = json.loads((run_dir / "test" / "scores.json").read_text())
        best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else {}
        return self.save_row({
            "name": name, "trained_on": trained_on, "miou": scores["miou"], "per_class": scores["per_class"],
            "pixel_accuracy": scores["pixel_accuracy"], "device": self.device, "seconds": round(seconds, 1),
            "command": " ".join(map(str, cmd[2:])), "selection": f"best val mIoU {best.get('miou', float('nan')):.4f} "
                                                              f"at step {best.get('step', '?')}",
            **(record or {}),
        })

    def data_part(self, name: str, make) -> int:
        """One part of the students' data, RUN_DIR/data/<name>: made by ``make(dest) -> seconds`` if missing (the
        seconds kept in data/seconds.json under ``name``, so a resumed run still reports them); its sample count."""
        from labelgen.data.io import atomic_write_json

        dest = self.out / "data" / name
        if not (dest / "manifest.json").is_file():
            timing = self.data_timing()
            timing[name] = make(dest)
            atomic_write_json(self.out / "data" / "seconds.json", timing)
        return json.loads((dest / "manifest.json").read_text())["num_samples"]

    def data_timing(self) -> dict:
        path = self.out / "data" / "seconds.json"  # how long each part took when it was made
        return json.loads(path.read_text()) if path.is_file() else {}

    def data_record(self, *names: str) -> dict:
        """{"data_seconds": what these parts took}, or {} if one was made before its timing was recorded."""
        timing = self.data_timing()
        return {"data_seconds": round(sum(timing[n] for n in names), 1)} if set(names) <= set(timing) else {}

    def synthesize(self, dest: Path, workspace: Path | None = None, tta: str = "real", n: int | None = None,
                   seed_base: int | None = None) -> float:
        """``n`` (default: ``synthetic_n``) samples labelled by ``workspace``'s heads (default: BEST_TEACHER's;
        ``tta``: synthesize --tta, "all" = flip TTA on the samples too) into ``dest``, sample k from seed
        ``seed_base`` + k (default: synthesize's own base); returns seconds."""
        workspace = workspace or self.heads_workspace(*BEST_TEACHER)[0]
        cmd = labelgen("synthesize", "-w", workspace, "--n", n or self.p.synthetic_n, "--out", dest, "--soft-labels",
                       "uint8", "--drop-uncertain", 0.1, "--shard-size", 500, "--tta", tta)
        if seed_base is not None:
            cmd += ["--seed-base", str(seed_base)]
        return run(cmd, self.out / "logs" / f"{dest.name}.log")

    def pseudo_label(self, dest: Path, limit: int | None, workspace: Path | None = None) -> float:
        """``workspace``'s heads (default: BEST_TEACHER's) label the first ``limit`` (None: all) `unlabeled` photos
        into ``dest`` (soft labels, flip TTA); returns seconds."""
        workspace = workspace or self.heads_workspace(*BEST_TEACHER)[0]
        cmd = labelgen("synthesize", "-w", workspace, "--from-images",
                       self.ccp / "unlabeled" / "images", "--out", dest, "--soft-labels", "uint8", "--shard-size", 500)
        if limit:
            cmd += ["--n", str(limit)]
        return run(cmd, self.out / "logs" / f"{dest.name}-label.log")

    def note(self, n_pseudo: int, which: str = "") -> str:
        return (f"{self.n_synthetic} DDIM-{self.p.ddim_steps} samples + {n_pseudo} pseudo-labelled photos{which} "
                "+ annotated-20")

    def distill_record(self) -> tuple[list[tuple[Path, float]], dict]:
        """The distillation data (synthetic samples + pseudo-labelled unlabeled photos, soft labels, + annotated-20),
        and the record its cost adds beside each distilled row's own training time."""
        if not hasattr(self, "_distill"):
            self.n_synthetic = self.data_part("synthetic", self.synthesize)
            n_pseudo = self.data_part("pseudo", lambda dest: self.pseudo_label(dest, self.p.unlabeled_limit))
            self.data_note = self.note(n_pseudo)
            data = [(self.out / "data" / "synthetic", 1.0), (self.out / "data" / "pseudo", 1.0),
                    (self.ccp / "annotated-20", self.p.real_weight)]
            self._distill = data, self.data_record("synthetic", "pseudo")
        return self._distill

    def label_distill_row(self) -> dict:
        data, record = self.distill_record()
        return self.student_row("label-distill", "label-distill", data, self.p.distill_steps,
                                f"{self.data_note}; soft labels tau=4", extra=("--tau", 4), record=record)

    def ensemble_record(self) -> tuple[list[tuple[Path, float]], str, dict]:
        """label-distill's data made again with teacher-ensemble-tta's heads labelling it (both heads; flip TTA on
        the synthetic samples too, `synthesize --tta all`): as many samples from the same seeds, the same photos;
        its parts, note and record."""
        workspace = self.ensemble_workspace()[0]
        n_synthetic = self.data_part("synthetic-ensemble", lambda dest: self.synthesize(dest, workspace, tta="all"))
        n_photos = self.data_part("pseudo-ensemble",
                                  lambda dest: self.pseudo_label(dest, self.p.unlabeled_limit, workspace))
        data = [(self.out / "data" / "synthetic-ensemble", 1.0), (self.out / "data" / "pseudo-ensemble", 1.0),
                (self.ccp / "annotated-20", self.p.real_weight)]
        note = (f"{n_synthetic} DDIM-{self.p.ddim_steps} samples + {n_photos} pseudo-labelled photos + annotated-20, "
                "labelled by teacher-ensemble-tta (both heads; flip TTA on samples and photos)")
        return data, note, self.data_record("synthetic-ensemble", "pseudo-ensemble")

    def ensemble_labels_row(self) -> dict:
        """label-distill-ens: label-distill on ensemble_record()'s data."""
        if row := self.row_done("label-distill-ens"):
            return row
        data, note, record = self.ensemble_record()
        return self.student_row("label-distill-ens", "label-distill", data, self.p.distill_steps,
                                f"{note}; soft labels tau=4", extra=("--tau", 4), record=record)

    def lever_row(self, name: str) -> dict:
        """label-distill + one student lever (STUDENT_LEVERS), on the same data."""
        data, record = self.distill_record()
        extra, what, image_size = STUDENT_LEVERS[name]
        return self.student_row(name, "label-distill", data, self.p.distill_steps,
                                f"{self.data_note}; soft labels tau=4; {what}", extra=("--tau", 4, *extra), record=record,
                                image_size=image_size)

    def more_samples_row(self) -> dict:
        """label-distill-8x-samples: label-distill's data with (SAMPLES_FACTOR - 1) x ``synthetic_n`` more synthetic
        samples from other seeds (its own samples stay in; the same photos, steps and per-sample weights)."""
        name = "label-distill-8x-samples"
        if row := self.row_done(name):
            return row
        data, _ = self.distill_record()
        n_more = self.data_part("synthetic-more", lambda dest: self.synthesize(
            dest, n=(SAMPLES_FACTOR - 1) * self.p.synthetic_n, seed_base=MORE_SAMPLES_SEED_BASE))
        data = [data[0], (self.out / "data" / "synthetic-more", 1.0), *data[1:]]
        note = self.data_note.replace(f"{self.n_synthetic} DDIM", f"{self.n_synthetic + n_more} DDIM", 1)
        return self.student_row(name, "label-distill", data, self.p.distill_steps,
                                f"{note} (label-distill's {self.n_synthetic} samples + {n_more} from other seeds); "
                                "soft labels tau=4", extra=("--tau", 4),
                                record=self.data_record("synthetic", "pseudo", "synthetic-more"))

    def long_row(self) -> dict:
        """label-distill-long: label-distill with LONG_FACTOR x the steps, on the same data."""
        data, record = self.distill_record()
        return self.student_row("label-distill-long", "label-distill", data, LONG_FACTOR * self.p.distill_steps,
                                f"{self.data_note}; soft labels tau=4; {LONG_FACTOR}x steps", extra=("--tau", 4),
                                record=record)

    def long_all_row(self, name: str) -> dict:
        """label-distill-long with every `unlabeled` photo pseudo-labelled by the same teacher, the student at
        LONG_ALL_ROWS[name]'s size (the -2x / -3x rows: the levers combined)."""
        if row := self.row_done(name):
            return row
        image_size = LONG_ALL_ROWS[name]
        data, note, record = self.all_photos_record()
        what = f"soft labels tau=4; {LONG_FACTOR}x steps"
        if image_size != STUDENT_SIZE:
            what += f"; student at {image_size} (predictions resized to the photos' size)"
        return self.student_row(name, "label-distill", data, LONG_FACTOR * self.p.distill_steps, f"{note}; {what}",
                                extra=("--tau", 4), record=record, image_size=image_size)

    def all_photos_record(self) -> tuple[list[tuple[Path, float]], str, dict]:
        """label-distill's data with every `unlabeled` photo pseudo-labelled (the second part), its note and record."""
        if not self.p.unlabeled_limit:  # label-distill's photos are all of them already
            data, record = self.distill_record()
            return data, self.data_note, record
        self.n_synthetic = self.data_part("synthetic", self.synthesize)  # label-distill's samples (not its photos)
        note = self.note(self.data_part("pseudo-all", lambda dest: self.pseudo_label(dest, None)), " (all)")
        data = [(self.out / "data" / "synthetic", 1.0), (self.out / "data" / "pseudo-all", 1.0),
                (self.ccp / "annotated-20", self.p.real_weight)]
        return data, note, self.data_record("synthetic", "pseudo-all")

    def student_tta_row(self, name: str) -> dict:
        """STUDENT_TTA_ROWS[name]'s checkpoint (trained in this run folder) scored again with flip test-time
        augmentation (`student eval --flip`): on `val` without and with it (the choice), then once on test."""
        if row := self.row_done(name):
            return row
        base = STUDENT_TTA_ROWS[name]
        base_row = self.row(base)
        run_dir = self.out / "students" / base
        if not (run_dir / "student_config.json").is_file():
            raise click.ClickException(f"{name}: {base}'s checkpoint is not in {self.out / 'students'} (its row was "
                                       f"read back from another sitting); remove rows/{base}.json to train it here")
        seconds, scores = 0.0, {}
        for split, folder, flip in (("val", "val", False), ("val", "val-tta", True), ("test", "test-tta", True)):
            cmd = student("eval", "--checkpoint", run_dir, "--data", self.ccp / split, "--out", run_dir / folder,
                          "--flip" if flip else "--no-flip")
            seconds += run(cmd, self.out / "logs" / f"{name}-{folder}.log")
            scores[folder] = json.loads((run_dir / folder / "scores.json").read_text())
        test = scores["test-tta"]
        return self.save_row({
            "name": name, "trained_on": f"{base}'s checkpoint; flip TTA", "miou": test["miou"],
            "per_class": test["per_class"], "pixel_accuracy": test["pixel_accuracy"], "device": self.device,
            "seconds": round(seconds, 1), "command": " ".join(map(str, cmd[2:])),
            "selection": f"{base}'s checkpoint (seconds: evaluation only); val mIoU {scores['val']['miou']:.4f} "
                         f"without TTA, {scores['val-tta']['miou']:.4f} with it",
            "val_miou": {"no_tta": scores["val"]["miou"], "tta": scores["val-tta"]["miou"]},
            "tta_of": base, "tta_of_test_miou": base_row["miou"],
        })

    def dream_row(self) -> dict:
        data, record = self.distill_record()
        teacher_ws = self.heads_workspace(*BEST_TEACHER)[0]
        return self.student_row("dreamteacher", "dreamteacher", data, self.p.dreamteacher_steps,
                                f"{self.data_note}; features + soft labels tau=4",
                                extra=("--tau", 4, "--teacher", teacher_ws), record=record)

    def finetuned_row(self) -> dict:
        """The distilled student with the best val mIoU (of those trained in this run folder: a row read back from
        another sitting has no checkpoint here) fine-tuned on annotated-20 at its own size."""
        if row := self.row_done("finetuned-20"):
            return row
        val = {}
        for name in DISTILLED_ROWS:
            self.row(name)
            if (best := self.out / "students" / name / "best.json").is_file():
                val[name] = json.loads(best.read_text())["miou"]
        if not val:
            raise click.ClickException(f"finetuned-20: no distilled student checkpoint in {self.out / 'students'}")
        name = max(val, key=val.get)
        width, height = json.loads((self.out / "students" / name / "student_config.json").read_text())["image_size"]
        return self.student_row("finetuned-20", "supervised", [(self.ccp / "annotated-20", 1)], self.p.finetune_steps,
                                f"{name} + annotated-20", init=self.out / "students" / name, lr=2e-4,
                                image_size=f"{width}x{height}", record={"fine_tuned": name, "fine_tuned_val_miou": val[name]})

    def row(self, name: str) -> dict:
        """Run (or read back) one row by name."""
        if name in TEACHER_ROWS:
            return self.teacher_row(name, *TEACHER_ROWS[name])
        if name in STUDENT_LEVERS:
            return self.lever_row(name)
        if name in LONG_ALL_ROWS:
            return self.long_all_row(name)
        if name in STUDENT_TTA_ROWS:
            return self.student_tta_row(name)
        supervised = {"supervised-20": ("annotated-20", self.p.supervised_steps, "annotated-20"),
                      "supervised-full": ("train-full", self.p.full_steps, "train-full (upper bound)")}
        if name in supervised:
            split, steps, trained_on = supervised[name]
            return self.student_row(name, "supervised", [(self.ccp / split, 1)], steps, trained_on)
        return {"teacher-ensemble": self.ensemble_row, "teacher-ensemble-tta": lambda: self.ensemble_row(flip=True),
                "label-distill": self.label_distill_row, "label-distill-ens": self.ensemble_labels_row,
                "label-distill-r2": self.round_two, "label-distill-8x-samples": self.more_samples_row,
                "label-distill-long": self.long_row,
                "label-distill-long-all-2x-r2": self.round_two_long_all_2x,
                "dreamteacher": self.dream_row,
                "finetuned-20": self.finetuned_row}[name]()

    def round_two(self) -> dict:
        """The label-distill student relabels the pseudo-labelled photos; a fresh student distils from those."""
        if row := self.row_done("label-distill-r2"):
            return row
        self.label_distill_row()
        data, record = self.distill_record()
        images = self.ccp / "unlabeled" / "images"
        if self.p.unlabeled_limit:  # the same photos the teacher labelled
            subset = self.out / "data" / "unlabeled-subset"
            if not subset.is_dir():
                subset.mkdir(parents=True)
                for path in sorted(images.glob("*.png"))[:self.p.unlabeled_limit]:
                    shutil.copy(path, subset / path.name)
            images = subset
        relabelled = self.relabel("pseudo-r2", "label-distill", images)
        data2 = [(data[0][0], 1.0), (relabelled, 1.0), *data[2:]]
        return self.student_row("label-distill-r2", "label-distill", data2, self.p.distill_steps,
                                f"{self.data_note.replace('pseudo-labelled photos', 'photos relabelled by label-distill')}"
                                "; soft labels tau=4", extra=("--tau", 4), record=record)

    def round_two_long_all_2x(self) -> dict:
        """Round 2 of the combined student: label-distill-long-all-2x and the teacher (soft labels averaged, weight
        R2_TEACHER_WEIGHT) relabel every `unlabeled` photo; a fresh student distils from those, trained as it was."""
        name = "label-distill-long-all-2x-r2"
        if row := self.row_done(name):
            return row
        self.long_all_row("label-distill-long-all-2x")
        data, _, record = self.all_photos_record()  # data[1]: the teacher's labels of every photo
        relabelled = self.relabel("pseudo-all-r2", "label-distill-long-all-2x", self.ccp / "unlabeled" / "images",
                                  data[1][0])
        n = json.loads((relabelled / "manifest.json").read_text())["num_samples"]
        return self.student_row(name, "label-distill", [data[0], (relabelled, 1.0), *data[2:]],
                                LONG_FACTOR * self.p.distill_steps,
                                f"{self.n_synthetic} DDIM-{self.p.ddim_steps} samples + {n} photos (all) relabelled by "
                                f"label-distill-long-all-2x + teacher (weight {R2_TEACHER_WEIGHT:g}) + annotated-20; "
                                f"soft labels tau=4; {LONG_FACTOR}x steps; student at {STUDENT_SIZE_2X}",
                                extra=("--tau", 4), record=record, image_size=STUDENT_SIZE_2X)

    def relabel(self, part: str, student_row: str, images: Path, teacher_labels: Path | None = None) -> Path:
        """RUN_DIR/data/<part>: ``images`` relabelled by this run's ``student_row`` student (flip TTA; with
        ``teacher_labels``, averaged with the teacher's soft labels of the same photos at R2_TEACHER_WEIGHT)."""
        dest = self.out / "data" / part
        if not (dest / "manifest.json").is_file():
            shutil.rmtree(dest, ignore_errors=True)
            mix = () if teacher_labels is None else ("--teacher-shards", teacher_labels, "--teacher-weight",
                                                     R2_TEACHER_WEIGHT)
            run(student("pseudo-label", "--checkpoint", self.out / "students" / student_row, "--images", images,
                        "--out", dest, *mix), self.out / "logs" / f"pseudo-label-{part}.log")
        return dest


# name -> (features, head type, class balance, train-heads --augment, flip TTA, trained on)
TEACHER_ROWS = {
    "teacher-pixel-mlp": ("default", "pixel-mlp", 0.0, "none", False, "annotated-20 (default features)"),
    "teacher-selected": ("selected", "pixel-mlp", 0.0, "none", False, "annotated-20 (features chosen on val)"),
    "teacher-selected-cb": ("selected", "pixel-mlp", 0.5, "none", False, "annotated-20 (selected features, class balance)"),
    "teacher-selected-cb-tta": ("selected", "pixel-mlp", 0.5, "none", True,
                                "annotated-20 (selected, class balance, flip TTA)"),
    "teacher-conv": ("selected", "conv", 0.5, "none", False, "annotated-20 (selected features, class balance)"),
    "teacher-selected-cb-flip": ("selected", "pixel-mlp", 0.5, "flip", False,
                                 "annotated-20 + mirror images (selected, class balance)"),
    "teacher-selected-cb-flip-tta": ("selected", "pixel-mlp", 0.5, "flip", True,
                                     "annotated-20 + mirror images (selected, class balance, flip TTA)"),
}
BEST_TEACHER = ("selected", "pixel-mlp", 0.5, "flip")  # (features, head type, class balance, augment): labels the students' data
# teacher-ensemble combines the heads of these rows' workspaces: teacher-selected-cb-flip's (W/heads/) + teacher-conv's
ENSEMBLE_HEADS = (BEST_TEACHER, ("selected", "conv", 0.5))
# name -> (extra `student train` options over label-distill's, what the row adds, --image-size)
STUDENT_LEVERS = {
    "label-distill-strong-aug": (("--augment-policy", "strong"), "strong augmentation (crop, flip, colour)", STUDENT_SIZE),
    # weight 1, set once (not tuned): the KL term at the size of the soft-label loss
    "label-distill-cons": (("--consistency-weight", 1), "consistency between colour-jittered and plain views (weight 1)",
                           STUDENT_SIZE),
    "label-distill-uw": (("--uncertainty-weighting",), "samples weighted by teacher uncertainty", STUDENT_SIZE),
    # 0.99: an average over the last ~100 of label-distill's 800 steps (the val interval); set once, not tuned
    "label-distill-ema": (("--ema-decay", 0.99), "weights averaged over steps (EMA, decay 0.99)", STUDENT_SIZE),
    # resnet18's stem divides by 4 at once: at 96x64 its first features are 24x16. The student reads the photos
    # (and its labels) resized to twice their size and its predictions are resized back: 4x the compute
    "label-distill-2x": ((), "student at 2x the photos' size (192x128 input, predictions resized to 96x64)",
                         STUDENT_SIZE_2X),
}

# label-distill-8x-samples: this many times label-distill's synthetic samples (the preset's synthetic_n); the added
# ones start at this seed base, clear of label-distill's (synthesize's default base 1,000,000 + k, k < 2 x synthetic_n)
SAMPLES_FACTOR = 8
MORE_SAMPLES_SEED_BASE = 2_000_000
LONG_FACTOR = 4  # label-distill-long and the LONG_ALL_ROWS: this many times the preset's distill_steps
# label-distill-long on every `unlabeled` photo: name -> student --image-size
LONG_ALL_ROWS = {
    "label-distill-long-all": STUDENT_SIZE,
    "label-distill-long-all-2x": STUDENT_SIZE_2X,
    "label-distill-long-all-3x": STUDENT_SIZE_3X,
}
# a distilled student's checkpoint scored again with flip TTA (two forward passes a photo): row -> the row it re-scores
STUDENT_TTA_ROWS = {"label-distill-long-all-tta": "label-distill-long-all",
                    "label-distill-long-all-3x-tta": "label-distill-long-all-3x"}
# label-distill-long-all-2x-r2: the teacher's share of the relabelled photos' soft labels (the rest: the student's);
# set once, not tuned (an even mix of the two models, the student being about level with its teacher)
R2_TEACHER_WEIGHT = 0.5
# the distilled students finetuned-20 chooses from (the one with the best val mIoU is fine-tuned)
DISTILLED_ROWS = ("label-distill", "label-distill-ens", "label-distill-r2", "dreamteacher", *STUDENT_LEVERS,
                  "label-distill-8x-samples", "label-distill-long",
                  *LONG_ALL_ROWS, "label-distill-long-all-2x-r2")

# groups of --rows, in the order they run (rows added later run after the rows they are compared with)
ROW_GROUPS = {
    "supervised": ("supervised-20", "supervised-full"),
    "teacher": (*TEACHER_ROWS, "teacher-ensemble", "teacher-ensemble-tta"),
    "distill": (*DISTILLED_ROWS, *STUDENT_TTA_ROWS, "finetuned-20"),
}
ROW_ORDER = ("supervised-20", "supervised-full", *TEACHER_ROWS, "teacher-ensemble", "teacher-ensemble-tta", "label-distill",
             "label-distill-ens", "label-distill-r2", *STUDENT_LEVERS, "label-distill-8x-samples", "label-distill-long",
             *LONG_ALL_ROWS, *STUDENT_TTA_ROWS,
             "label-distill-long-all-2x-r2", "dreamteacher", "finetuned-20")


def markdown(rows: list[dict]) -> str:
    classes = list(rows[0]["per_class"])
    head = "| row | trained on | mIoU | " + " | ".join(classes) + " | seconds | device |"
    lines = [head, "|" + "---|" * (len(classes) + 5)]
    for r in rows:
        per = " | ".join("n/a" if r["per_class"][c] is None else f"{r['per_class'][c]:.2f}" for c in classes)
        lines.append(f"| {r['name']} | {r['trained_on']} | **{r['miou']:.3f}** | {per} | {r['seconds']:.0f} | {r['device']} |")
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
@click.option("--rows", "row_groups", type=str, default=",".join(ROW_GROUPS),
              help="Row groups and/or row names to run now (finished rows of others are read back from --out).")
def main(ccp: Path, src: Path | None, teacher: Path | None, preset: str, out: Path, results: Path, threads: int,
         seed: int, row_groups: str):
    """Run (or resume) every row, print the markdown table, write the JSON."""
    from labelgen.data.io import atomic_write_json

    if not (ccp / "classes.json").is_file():
        if src is None:
            raise click.ClickException(f"{ccp}: not an imported CCP folder (pass --src to import it)")
        run(labelgen("data", "import-ccp", "--src", src, "--out", ccp, "--size", "96x64"), out / "logs" / "import.log")
    start = time.perf_counter()
    bench = Bench(ccp, teacher, out, PRESETS[preset], threads, seed)
    names = []
    for item in (g.strip() for g in row_groups.split(",") if g.strip()):
        if item not in ROW_GROUPS and item not in ROW_ORDER:
            raise click.BadParameter(f"{item!r}: row groups are {', '.join(ROW_GROUPS)}; rows are {', '.join(ROW_ORDER)}",
                                     param_hint="--rows")
        names += [n for n in ROW_GROUPS.get(item, (item,)) if n not in names]
    for name in names:
        bench.row(name)
    rows = [r for name in ROW_ORDER if (r := bench.row_done(name))]
    for r in rows:
        r["preset"] = preset
    atomic_write_json(results, rows)
    click.echo(markdown(rows))
    click.echo(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s -> {results}")


if __name__ == "__main__":
    main()

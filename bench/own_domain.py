"""Your own domain on a CPU: which path from photos to a student wins, per generator budget (issue 37).

    .venv/bin/python bench/own_domain.py --data DS --size HxW [--paths supervised,pretrained,finetune,scratch] \
        [--gen-minutes 15] [--seeds 3] [--student-steps 800] [--out RUN] [--results JSON]

``DS`` is a dataset in the project folder layout (what ``labelgen data import-*`` writes): ``annotated-20/``,
``unlabeled/``, ``val/``, ``test/`` (each ``images/`` + ``masks/``; unlabeled: images only) and ``classes.json``.
Every path follows the README's "your own domain" commands with their defaults; each is a row:

    supervised   the baseline to beat: the student trained on annotated-20 alone
    pretrained   the embedded CCP DDPM as it is (no generator training; photos brought to its 96x64 by the import rule)
    finetune     ``train-generator --init default`` on DS/unlabeled for --gen-minutes, at --size
    scratch      ``train-generator`` from noise for --gen-minutes, at --size

A teacher path: [train-generator] -> init (--timesteps 25) -> import annotated-20 -> train-heads (defaults but --epochs) -> teacher mIoU on test ->
synthesize --n N (DDIM-10) + synthesize --from-images unlabeled -> student label-distill (annotated-20 drawn 20x as
often) at each seed -> student mIoU on test. Students: U-Net/ResNet-18 at --size, the same steps, batch, lr and class
balance on every path. Scored as the CCP table: mean IoU over the classes from one confusion matrix over test.

Each stage's output and seconds are kept under RUN/<dataset>/<path>-<minutes>min/ (a killed run resumes at the
stage it was in); ``total_s`` is photos -> one student (generator + teacher + data + one student run + its test
evaluation), the budget the issue counts. Prints a markdown table and writes ``--results`` (rows merged by
dataset + path + minutes).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from statistics import mean, stdev

import click

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ccp_quality import ROOT, labelgen, run, student  # noqa: E402  (one way to run a CLI step)

PATHS = ("supervised", "pretrained", "finetune", "scratch")
TRAINS_GENERATOR = ("finetune", "scratch")
DEFAULT_GENERATOR = ROOT / "labelgen" / "default_teacher" / "generator"


class Flow:
    """One dataset, one path, one generator budget: its stages, each run once and remembered (stages/<name>.json)."""

    def __init__(self, data: Path, size: str, path: str, minutes: float, out: Path, threads: int, steps: int,
                 synthetic_n: int, head_epochs: int, timesteps: str):
        self.data, self.size, self.path, self.minutes = data, size, path, minutes
        self.threads, self.steps, self.synthetic_n, self.head_epochs = threads, steps, synthetic_n, head_epochs
        self.timesteps = timesteps
        tag = path if path not in TRAINS_GENERATOR else f"{path}-{minutes:g}min"
        self.dir = out / data.name / tag
        self.commands: list[str] = []

    def stage(self, name: str, command: list[str] | None = None, fn=None) -> dict:
        """Run a CLI step (or ``fn``) once; its record {seconds, ...} read back when done before."""
        record_path = self.dir / "stages" / f"{name}.json"
        if command is not None:
            self.commands.append(" ".join(command[2:]))
        if record_path.is_file():
            return json.loads(record_path.read_text())
        start = time.perf_counter()
        if fn is not None:
            extra = fn()
        else:
            run(command, self.dir / "logs" / f"{name}.log")
            extra = {}
        record = {"seconds": round(time.perf_counter() - start, 1), **extra}
        record_path.parent.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record))
        return record

    def classes(self) -> str:
        from labelgen.data.classes import read_classes_file

        return ",".join(read_classes_file(self.data / "classes.json").names)

    def student_cmd(self, run_dir: Path, seed: int, data: list[Path]) -> list[str]:
        mode = "supervised" if self.path == "supervised" else "label-distill"
        cmd = student("train", "--mode", mode, "--out", run_dir, "--val", self.data / "val", "--val-every",
                      max(self.steps // 8, 1), "--max-steps", self.steps, "--batch-size", 8, "--image-size",
                      self.size, "--arch", "unet", "--encoder", "resnet18", "--seed", seed, "--threads",
                      self.threads, "--lr", 0.001, "--class-balance", 0.5, "--no-progress",
                      *(("--tau", 4) if mode == "label-distill" else ()))
        for part in data:
            cmd += ["--data", str(part)]
        if len(data) > 1:
            cmd += ["--data-weights", ",".join("20" if p.name == "annotated-20" else "1" for p in data)]
        return cmd

    def teacher(self) -> tuple[dict, list[Path]]:
        """The teacher stages; (records, the student's data folders)."""
        ws, records = self.dir / "workspace", {}
        checkpoint = DEFAULT_GENERATOR
        if self.path in TRAINS_GENERATOR:
            gen = self.dir / "generator"
            records["generator"] = self.stage("generator", labelgen(
                "train-generator", "--backend", "ddpm", "--data", self.data / "unlabeled", "--out", gen,
                "--resolution", self.size, "--time-limit", self.minutes, "--steps", 1_000_000, "--sample-every", 0,
                "--quiet", *(("--init", "default") if self.path == "finetune" else ())))
            checkpoint = gen
        records["init"] = self.stage("init", labelgen("init", "-w", ws, "--generator", "ddpm", "--checkpoint",
                                                      checkpoint, "--classes", self.classes(), "--timesteps",
                                                      self.timesteps))
        annotated = self.data / "annotated-20"
        records["import"] = self.stage("import", labelgen("import", "-w", ws, "--images", annotated / "images",
                                                          "--masks", annotated / "masks"))
        records["heads"] = self.stage("heads", labelgen("train-heads", "-w", ws, "--epochs", self.head_epochs,
                                                        "--quiet"))
        records["teacher_test"] = self.stage("teacher_test", fn=lambda: self.score_teacher(ws))
        self.commands.append(f"(teacher on {self.data.name}/test: labelgen.training.evaluate_teacher)")
        synthetic, pseudo = self.dir / "synthetic", self.dir / "pseudo"
        records["synthetic"] = self.stage("synthetic", labelgen(
            "synthesize", "-w", ws, "--n", self.synthetic_n, "--ddim-steps", 10, "--soft-labels", "uint8",
            "--out", synthetic, "--quiet"))
        records["pseudo"] = self.stage("pseudo", labelgen(
            "synthesize", "-w", ws, "--from-images", self.data / "unlabeled" / "images", "--soft-labels", "uint8",
            "--out", pseudo, "--quiet"))
        return records, [synthetic, pseudo, annotated]

    def score_teacher(self, ws: Path) -> dict:
        from labelgen.training.evaluate_teacher import evaluate_teacher
        from labelgen.workspace import Workspace

        result = evaluate_teacher(Workspace(ws).teacher(), self.data / "test", progress=False)
        return {"miou": result["miou"], "per_class": result["per_class_iou"]}

    def student_seed(self, seed: int, data: list[Path]) -> dict:
        run_dir = self.dir / f"student-seed{seed}"
        train = self.stage(f"student-seed{seed}", self.student_cmd(run_dir, seed, data))
        evaluate = self.stage(f"student-seed{seed}-test", student("eval", "--checkpoint", run_dir, "--data",
                                                                   self.data / "test", "--out", run_dir / "test"))
        scores = json.loads((run_dir / "test" / "scores.json").read_text())
        return {"miou": scores["miou"], "seconds": train["seconds"] + evaluate["seconds"]}

    def row(self, seeds: list[int]) -> dict:
        records, data = ({}, [self.data / "annotated-20"]) if self.path == "supervised" else self.teacher()
        students = [self.student_seed(seed, data) for seed in seeds]
        scores = [s["miou"] for s in students]
        before = sum(r["seconds"] for r in records.values())
        return {
            "dataset": self.data.name, "path": self.path, "size": self.size,
            "gen_minutes": self.minutes if self.path in TRAINS_GENERATOR else 0,
            "teacher_miou": records.get("teacher_test", {}).get("miou"),
            "student_miou": mean(scores), "student_miou_std": stdev(scores) if len(scores) > 1 else None,
            "student_miou_seeds": scores, "seeds": seeds, "student_steps": self.steps,
            "stage_seconds": {name: r["seconds"] for name, r in records.items()},
            "student_seconds": round(mean(s["seconds"] for s in students), 1),
            "total_s": round(before + students[0]["seconds"], 1),
            "device": f"CPU ({os.cpu_count()} cores), {self.threads} torch thread(s)",
            "commands": list(dict.fromkeys(self.commands)),
        }


def markdown(rows: list[dict]) -> str:
    lines = ["| dataset | path | generator | teacher mIoU | student mIoU (seeds) | photos -> student |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        teacher = "" if r["teacher_miou"] is None else f"{r['teacher_miou']:.3f}"
        spread = "" if r["student_miou_std"] is None else f" ± {r['student_miou_std']:.3f}"
        gen = f"{r['gen_minutes']:g} min" if r["gen_minutes"] else ("embedded" if r["path"] == "pretrained" else "")
        lines.append(f"| {r['dataset']} | {r['path']} | {gen} | {teacher} | {r['student_miou']:.3f}{spread} "
                     f"({len(r['student_miou_seeds'])}) | {r['total_s'] / 60:.0f} min |")
    return "\n".join(lines)


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Dataset folder: annotated-20/, unlabeled/, val/, test/, classes.json.")
@click.option("--size", type=str, required=True, help="HxW of the generator (finetune, scratch) and the student.")
@click.option("--paths", type=str, default=",".join(PATHS), show_default=True, help=f"Of {', '.join(PATHS)}.")
@click.option("--gen-minutes", type=click.FloatRange(min=0.1), default=15.0, show_default=True,
              help="train-generator --time-limit of finetune / scratch.")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Student seeds 0..N-1.")
@click.option("--student-steps", type=click.IntRange(min=1), default=800, show_default=True)
@click.option("--synthetic-n", type=click.IntRange(min=1), default=64, show_default=True,
              help="synthesize --n (DDIM-10 samples the teacher labels).")
@click.option("--timesteps", type=str, default="25", show_default=True,
              help="init --timesteps: the embedded teacher's (chosen by tune-features on CCP); a third of the "
                   "features of init's default 50,150,250.")
@click.option("--head-epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="train-heads --epochs (the CCP table's cpu preset; train-heads' own default, 30, triples its time).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch threads per step.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "bench" / "runs" / "own_domain",
              show_default=True)
@click.option("--results", type=click.Path(path_type=Path), default=ROOT / "bench" / "results" / "own_domain.json",
              show_default=True)
def main(data: Path, size: str, paths: str, gen_minutes: float, seeds: int, student_steps: int, synthetic_n: int,
         timesteps: str, head_epochs: int, threads: int, out: Path, results: Path):
    """Run (or resume) each path on DATA, print the table, merge the rows into --results."""
    from labelgen.data.io import atomic_write_json

    chosen = [p.strip() for p in paths.split(",") if p.strip()]
    if unknown := [p for p in chosen if p not in PATHS]:
        raise click.BadParameter(f"{unknown[0]!r}: paths are {', '.join(PATHS)}", param_hint="--paths")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # the generator, heads and synthesis steps too
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)  # the in-process teacher evaluation
    new = [Flow(data, size, p, gen_minutes, out, threads, student_steps, synthetic_n, head_epochs,
                timesteps).row(list(range(seeds)))
           for p in chosen]
    key = lambda r: (r["dataset"], r["path"], r["gen_minutes"])  # noqa: E731
    old = json.loads(results.read_text()) if results.is_file() else []
    merged = {key(r): r for r in old} | {key(r): r for r in new}
    atomic_write_json(results, list(merged.values()))
    click.echo(markdown(new))


if __name__ == "__main__":
    main()

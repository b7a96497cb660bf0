"""The GPU check: labelgen's whole path on one GPU in at most 9 minutes, one JSON (+ logs) left behind.

    python bench/gpu_check.py --ccp CCP96 [--minutes 2] [--out DIR]     # on a machine with one CUDA GPU
    python bench/gpu_check.py --tiny [--out DIR]                        # the same steps on CPU, tiny sizes
    python bench/gpu_check.py join PACKED DEST                          # packed generator -> one-file folder

``CCP96`` is what ``labelgen data import-ccp --size 96x64`` writes (classes.json, annotated-20/, val/,
test/, unlabeled/). ``bench/gpu_check.sh`` is the wrapper for a fresh GPU machine (installs the wheels
first; docs/benchmarks.md, "GPU check"). Steps, each under its own time limit (seconds measured and
recorded; a step past its limit is stopped and recorded as "timeout", the steps that need it as "skipped"):

    data                 check (or, --tiny, make) the CCP-like folder
    train_generator      ``labelgen train-generator`` (the CCP DDPM teacher) for --minutes
    pack                 the trained generator as fp16 safetensors files of <= --pack-mb each (diffusers'
                         sharded layout: PACKED/unet/diffusion_pytorch_model-0000k-of-0000n.safetensors + index;
                         labelgen and diffusers load the folder as it is; ``join`` writes one-file weights)
    heads                ``labelgen init`` + ``import`` annotated-20 + ``train-heads``
    teacher_test         labelgen.training.evaluate_teacher on test (mIoU)
    ddpm_rates           bare sampling vs ``synthesize`` at DDIM-50 and DDIM-20 (bench/bench_synthesis.py)
    gan_rates            the same for a DCGAN and a random-weight StyleGAN2 at 256x256 (pixel-MLP heads)
    synthesis            ``labelgen synthesize`` (soft labels) + ``synthesize --from-images`` unlabeled/
    student              ``student train --mode label-distill`` on both + annotated-20, ``student eval`` on test
    student_loader       the student's DataLoader alone, same data (bench/bench_student.py)

Output (``--out``, default ``$OUT`` or ./gpu_check_out): gpu_check.json, logs/<step>.log, generator/,
packed/, ws/, data/, student/. gpu_check.json: {"device", "torch", "python", "date", "command", "sizes",
"total_seconds", "steps": {step: {"status": "ok" | "timeout" | "failed" | "skipped", "seconds", "limit_s",
...numbers}}}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT / "bench"))  # bench_synthesis, bench_student: their measuring functions


@dataclass(frozen=True)
class Sizes:
    """Everything a run's size depends on: the GPU check and its --tiny rehearsal differ only here."""

    resolution: tuple[int, int]  # (H, W) of the data and the generator
    channels: str  # UNet block channels (train-generator --channels)
    gen_batch: int  # train-generator --batch-size
    head_epochs: int
    rate_batch: int  # generator batch (workspace max_batch, synthesize --batch-size)
    ddpm_n: dict  # DDIM steps -> samples measured (bare and synthesis each)
    gan_n: int  # samples measured per GAN
    stylegan2: dict  # random-weight StyleGAN2 constructor arguments
    synthetic_n: int  # synthesize --n (DDIM-20)
    student_steps: int
    student_batch: int
    loader_batches: int
    pack_mb: float
    limits: dict  # step -> seconds (train_generator: added to --minutes)
    budget_s: float  # the whole run


GPU = Sizes(resolution=(96, 64), channels="64,128,256,256", gen_batch=64, head_epochs=20, rate_batch=256,
            ddpm_n={50: 512, 20: 1024}, gan_n=1024, stylegan2={"img_resolution": 256}, synthetic_n=4096,
            student_steps=600, student_batch=64, loader_batches=100, pack_mb=15.0,
            limits={"data": 10, "train_generator": 60, "pack": 20, "heads": 45, "teacher_test": 30, "ddpm_rates": 90,
                    "gan_rates": 60, "synthesis": 60, "student": 90, "student_loader": 30},
            budget_s=540.0)
TINY = Sizes(resolution=(64, 32), channels="8,16", gen_batch=4, head_epochs=1, rate_batch=4,
             ddpm_n={50: 2, 20: 4}, gan_n=4,
             stylegan2={"img_resolution": 32, "z_dim": 16, "w_dim": 16,
                        "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 256, "channel_max": 16}},
             synthetic_n=6, student_steps=3, student_batch=4, loader_batches=3, pack_mb=0.05,
             limits={"data": 30, "train_generator": 60, "pack": 30, "heads": 90, "teacher_test": 60, "ddpm_rates": 90,
                     "gan_rates": 120, "synthesis": 120, "student": 150, "student_loader": 60},
             budget_s=900.0)
TINY_MINUTES = 0.05  # --tiny: train-generator's time limit (3 s)
TINY_SPLITS = {"annotated-20": 4, "val": 2, "test": 3, "unlabeled": 8}  # images per split of the made-up data
STEPS = ("data", "train_generator", "pack", "heads", "teacher_test", "ddpm_rates", "gan_rates", "synthesis",
         "student", "student_loader")
NEEDS = {"pack": "train_generator", "heads": "train_generator", "teacher_test": "heads", "ddpm_rates": "heads",
         "synthesis": "heads", "student": "synthesis", "student_loader": "synthesis", "train_generator": "data"}


class StepTimeout(Exception):
    pass


class StepFailed(Exception):
    pass


# ---------------------------------------------------------------- running steps
class Check:
    def __init__(self, out: Path, ccp: Path, sizes: Sizes, minutes: float, tiny: bool, command: str):
        self.out, self.ccp, self.s, self.minutes, self.tiny = out, ccp, sizes, minutes, tiny
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.record: dict[str, Any] = {"device": device_name(), "torch": torch_version(), "python": platform.python_version(),
                                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                                       "command": command, "tiny": tiny, "minutes": minutes, "sizes": asdict(sizes),
                                       "steps": {}}
        self.budget_s = sizes.budget_s
        if os.environ.get("GPU_CHECK_SETUP_S"):  # bench/gpu_check.sh: installing the wheels (before this process)
            self.record["setup_seconds"] = float(os.environ["GPU_CHECK_SETUP_S"])
            self.budget_s -= self.record["setup_seconds"]  # the 9 minutes include the set-up

    def limit(self, name: str) -> float:
        extra = self.minutes * 60 if name == "train_generator" else 0
        return min(self.s.limits[name] + extra, self.budget_s - (time.monotonic() - self.start))

    def step(self, name: str, fn: Callable[[float], dict]) -> None:
        """Run one step under its limit; record status, seconds and its numbers; save the JSON."""
        need = NEEDS.get(name)
        limit = self.limit(name)
        entry: dict[str, Any] = {"limit_s": round(limit, 1)}
        if need and self.record["steps"].get(need, {}).get("status") != "ok":
            entry.update(status="skipped", seconds=0.0, reason=f"{need} did not finish")
        elif limit < 3:
            entry.update(status="skipped", seconds=0.0, reason="out of the run's time budget")
        else:
            print(f"[gpu_check] {name} (limit {limit:.0f} s) ...", flush=True)
            started = time.perf_counter()
            old = signal.signal(signal.SIGALRM, _alarm)
            signal.setitimer(signal.ITIMER_REAL, limit + 1)  # in-process steps (subprocesses: their own timeout, first)
            try:
                entry.update(fn(limit))
                entry["status"] = "ok"
            except (StepTimeout, subprocess.TimeoutExpired):
                entry["status"] = "timeout"
            except Exception as e:  # recorded, and the steps that do not need this one still run
                entry.update(status="failed", error=f"{type(e).__name__}: {str(e)[-2000:]}")
                (self.logs / f"{name}.error.log").write_text(traceback.format_exc())
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
            entry["seconds"] = round(time.perf_counter() - started, 3)
            print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
        self.record["steps"][name] = entry
        self.save()

    def save(self) -> None:
        from labelgen.data.io import atomic_write_json

        self.record["total_seconds"] = round(time.monotonic() - self.start, 1)
        atomic_write_json(self.out / "gpu_check.json", self.record)

    def cli(self, log_name: str, command: list, limit: float) -> float:
        """One CLI command, its output appended to logs/<log_name>.log; returns its seconds. A subprocess with
        ``limit`` as its timeout; --tiny runs the same CLI entry point in this process (no interpreter start-up
        per command; the step's own timer still bounds it)."""
        log = self.logs / f"{log_name}.log"
        started = time.perf_counter()
        with open(log, "a") as f:
            f.write("$ " + " ".join(map(str, command)) + "\n")
            f.flush()
            if self.tiny:
                code = run_in_process(command[2], [str(c) for c in command[3:]], f)
            else:
                # cwd: not the repository root, whose labelgen/ would shadow the installed package (labelgen.student
                # is student/ only once installed)
                code = subprocess.run([str(c) for c in command], stdout=f, stderr=subprocess.STDOUT, cwd=self.out,
                                      timeout=max(1.0, limit)).returncode
        if code != 0:
            tail = "\n".join(log.read_text().splitlines()[-12:])
            raise StepFailed(f"exit {code}: {' '.join(map(str, command[3:6]))} ... (logs/{log.name}):\n{tail}")
        return time.perf_counter() - started

    def remaining(self, started: float, limit: float) -> float:
        return limit - (time.perf_counter() - started)

    # ---------------------------------------------------------------- the steps
    def data(self, limit: float) -> dict:
        if self.tiny and not (self.ccp / "classes.json").is_file():
            make_tiny_ccp(self.ccp, self.s.resolution)
        missing = [s for s in ("annotated-20", "val", "test", "unlabeled") if not (self.ccp / s / "images").is_dir()]
        if not (self.ccp / "classes.json").is_file() or missing:
            raise StepFailed(f"{self.ccp}: not a CCP folder as `labelgen data import-ccp` writes it "
                             f"(missing: {', '.join(missing) or 'classes.json'})")
        from labelgen.data.io import list_images, read_image

        first = read_image(list_images(self.ccp / "unlabeled" / "images")[0])
        if first.shape[:2] != self.s.resolution:
            raise StepFailed(f"{self.ccp}: images are {first.shape[0]}x{first.shape[1]}, expected "
                             f"{self.s.resolution[0]}x{self.s.resolution[1]} (HxW)")
        return {"images": {s: len(list_images(self.ccp / s / "images")) for s in TINY_SPLITS}}

    def train_generator(self, limit: float) -> dict:
        out = self.out / "generator"
        h, w = self.s.resolution
        seconds = self.cli("train_generator", labelgen(
            "train-generator", "--backend", "ddpm", "--data", self.ccp / "unlabeled", "--out", out,
            "--resolution", f"{h}x{w}", "--channels", self.s.channels, "--batch-size", self.s.gen_batch,
            "--steps", 10 ** 7, "--lr", "2e-4", "--warmup", 200, "--sample-every", 0, "--checkpoint-every", 10 ** 7,
            "--export-fp16", "--time-limit", self.minutes, "--quiet"), limit)
        from labelgen.run import load_resume, read_log

        state = load_resume(out / "train" / "checkpoint.pt", "ddpm")
        rows = read_log(out / "train" / "log.csv")
        steps, train_seconds = int(state["step"]), float(state["seconds"])
        log = (self.logs / "train_generator.log").read_text()
        return {"steps": steps, "train_seconds": round(train_seconds, 2), "steps_per_s": round(steps / train_seconds, 3),
                "batch_size": self.s.gen_batch, "params": sum(v.numel() for v in state["model"].values()),
                "command_seconds": round(seconds, 2), "compiled": ", compiled" in log,
                "compile_fell_back": "torch.compile failed" in log,
                **({"logged_loss": float(rows[-1]["loss"])} if rows else {})}  # log.csv: every 50 steps

    def pack(self, limit: float) -> dict:
        files = pack_generator(self.out / "generator", self.out / "packed", self.s.pack_mb)
        return {"files": {str(p.relative_to(self.out / "packed")): p.stat().st_size for p in files},
                "largest_bytes": max(p.stat().st_size for p in files), "max_bytes": int(self.s.pack_mb * 1e6),
                "same_weights": same_unet(self.out / "generator", self.out / "packed")}

    def heads(self, limit: float) -> dict:
        ws = self.out / "ws"
        shutil.rmtree(ws, ignore_errors=True)
        names = ",".join(json_classes(self.ccp))
        started = time.perf_counter()
        self.cli("heads", labelgen("init", ws, "--generator", "ddpm", "--checkpoint", self.out / "generator",
                                   "--classes", names, "--timesteps", "50,150,250"), limit)
        # bf16 autocast + channels_last: used on CUDA only (the measured setup of issue 13), features unchanged
        set_generator_options(ws, {"max_batch": self.s.rate_batch, "ddim_steps": 20, "bf16": True, "channels_last": True})
        self.cli("heads", labelgen("import", "-w", ws, "--images", self.ccp / "annotated-20" / "images",
                                   "--masks", self.ccp / "annotated-20" / "masks"), self.remaining(started, limit))
        seconds = self.cli("heads", labelgen("train-heads", "-w", ws, "--epochs", self.s.head_epochs),
                           self.remaining(started, limit))
        return {"train_heads_seconds": round(seconds, 2), "epochs": self.s.head_epochs}

    def teacher_test(self, limit: float) -> dict:
        from labelgen.training.evaluate_teacher import evaluate_teacher

        import torch

        from labelgen.workspace import Workspace

        teacher = Workspace(self.out / "ws").teacher(device="cuda" if torch.cuda.is_available() else None)
        result = evaluate_teacher(teacher, self.ccp / "test", progress=False)
        return {"miou": result["miou"], "pixel_accuracy": result["pixel_accuracy"],
                "per_class_iou": result["per_class_iou"], "images": result.get("images")}

    def ddpm_rates(self, limit: float) -> dict:
        out = {}
        for ddim, n in self.s.ddpm_n.items():
            set_generator_options(self.out / "ws", {"ddim_steps": ddim})
            out[f"ddim{ddim}"] = rates(self.out / "ws", n, self.s.rate_batch, self.out / "rates" / f"ddim{ddim}")
        set_generator_options(self.out / "ws", {"ddim_steps": 20})
        return out

    def gan_rates(self, limit: float) -> dict:
        from bench_synthesis import make_workspace

        from labelgen.generators import create_generator

        root = self.out / "gan"
        shutil.rmtree(root, ignore_errors=True)
        import torch

        torch.manual_seed(0)
        create_generator("stylegan2", **self.s.stylegan2).save_pretrained(root / "stylegan2-random")
        out = {}
        for name, backend, checkpoint in (("dcgan", "dcgan", None), ("stylegan2_random", "stylegan2",
                                                                      root / "stylegan2-random")):
            ws = make_workspace(root / f"ws-{name}", backend, "pixel-mlp", checkpoint, {})
            resolution = list(ws.resolution)
            out[name] = {**rates(ws.root, self.s.gan_n, self.s.rate_batch, root / f"out-{name}"), "resolution": resolution}
        return out

    def synthesis(self, limit: float) -> dict:
        started = time.perf_counter()
        data = self.out / "data"
        shutil.rmtree(data, ignore_errors=True)
        ws = self.out / "ws"
        t_syn = self.cli("synthesis", labelgen("synthesize", "-w", ws, "--n", self.s.synthetic_n, "--out", data / "synthetic",
                                               "--soft-labels", "uint8", "--batch-size", self.s.rate_batch,
                                               "--shard-size", 1000), limit)
        t_pseudo = self.cli("synthesis", labelgen("synthesize", "-w", ws, "--from-images", self.ccp / "unlabeled" / "images",
                                                  "--out", data / "pseudo", "--soft-labels", "uint8",
                                                  "--batch-size", self.s.rate_batch, "--shard-size", 1000),
                            self.remaining(started, limit))
        n_syn, n_pseudo = (json.loads((data / d / "manifest.json").read_text())["num_samples"]
                           for d in ("synthetic", "pseudo"))
        return {"synthetic": {"n": n_syn, "ddim_steps": 20, "seconds": round(t_syn, 2),
                              "samples_per_s_with_startup": round(n_syn / t_syn, 2)},
                "pseudo_labels": {"n": n_pseudo, "seconds": round(t_pseudo, 2),
                                  "photos_per_s_with_startup": round(n_pseudo / t_pseudo, 2)}}

    def student_sources(self) -> list[Path]:
        return [self.out / "data" / "synthetic", self.out / "data" / "pseudo", self.ccp / "annotated-20"]

    def student(self, limit: float) -> dict:
        started = time.perf_counter()
        run_dir = self.out / "student"
        shutil.rmtree(run_dir, ignore_errors=True)
        h, w = self.s.resolution
        command = student_cli("train", "--mode", "label-distill", "--out", run_dir, "--val", self.ccp / "val",
                              "--max-steps", self.s.student_steps, "--batch-size", self.s.student_batch,
                              "--image-size", f"{h}x{w}", "--arch", "unet", "--encoder", "resnet18",
                              "--class-balance", 0.5, "--tau", 4, "--no-progress", "--no-resume")
        for source in self.student_sources():
            command += ["--data", source]
        command += ["--data-weights", "1,1,20"]
        train_seconds = self.cli("student", command, limit)
        self.cli("student", student_cli("eval", "--checkpoint", run_dir, "--data", self.ccp / "test", "--out",
                                        run_dir / "test"), self.remaining(started, limit))
        from labelgen.run import read_log

        rows = read_log(run_dir / "log.csv")
        scores = json.loads((run_dir / "test" / "scores.json").read_text())
        return {"steps": self.s.student_steps, "batch_size": self.s.student_batch,
                "train_images_per_s": float(rows[-1]["images_per_s"]),  # over the training loop (data waits included)
                "command_seconds": round(train_seconds, 2), "test_miou": scores["miou"],
                "val_miou": json.loads((run_dir / "best.json").read_text())["miou"]}

    def student_loader(self, limit: float) -> dict:
        from bench_student import loader_rate

        from labelgen.student.data import default_loader_workers

        workers = default_loader_workers()
        rate = loader_rate(self.student_sources(), self.s.resolution, self.s.student_batch, workers,
                           self.s.loader_batches)
        entry: dict[str, Any] = {"images_per_s": round(rate, 1), "workers": workers, "batch_size": self.s.student_batch}
        train = self.record["steps"].get("student", {}).get("train_images_per_s")
        if train:
            entry["loader_over_train"] = round(rate / train, 2)
        return entry


def _alarm(signum, frame):
    raise StepTimeout


# ---------------------------------------------------------------- pieces
def labelgen(*args) -> list:
    return [PY, "-m", "labelgen.cli", *args]


def student_cli(*args) -> list:
    return [PY, "-m", "labelgen.student.cli", *args]


def run_in_process(module: str, args: list[str], log) -> int:
    """``python -m module args`` (labelgen.cli or labelgen.student.cli) in this process, output to ``log``;
    returns the exit status."""
    import importlib
    from contextlib import redirect_stderr, redirect_stdout

    entry = importlib.import_module(module).main
    with redirect_stdout(log), redirect_stderr(log):
        try:
            entry(args)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def torch_version() -> str:
    import torch

    return torch.__version__


def json_classes(ccp: Path) -> list[str]:
    from labelgen.data.classes import read_classes_file

    return list(read_classes_file(ccp / "classes.json").names)


def set_generator_options(ws_dir: Path, options: dict) -> None:
    """Workspace generator options that do not change the features (DDIM steps, batch): heads stay valid."""
    from labelgen.workspace import Workspace

    ws = Workspace(ws_dir)
    ws.config.generator_options.update(options)
    ws.save_config()


def rates(ws_dir: Path, n: int, batch: int, out: Path) -> dict:
    """Bare sampling vs ``synthesize`` (bench/bench_synthesis.py's measuring functions), on this machine's device."""
    import torch
    from bench_synthesis import bare_rate, synthesis_rate

    from labelgen.synthesis import SynthesisConfig
    from labelgen.workspace import Workspace

    ws = Workspace(ws_dir)
    if torch.cuda.is_available():
        ws.generator().to("cuda")  # the workspace's one generator: bare_rate samples with it, synthesize reuses it
    encode = SynthesisConfig(n=n).encode_workers  # synthesize's own default
    bare = bare_rate(ws, n, batch)
    synth, bytes_per = synthesis_rate(ws, n, batch, encode, out)
    shutil.rmtree(out, ignore_errors=True)
    return {"n": n, "batch_size": batch, "bare_per_s": round(bare, 2), "synthesis_per_s": round(synth, 2),
            "time_ratio": round(bare / synth, 3), "bytes_per_sample": round(bytes_per), "encode_workers": encode}


# ---------------------------------------------------------------- packing
def pack_generator(src: Path, dest: Path, max_mb: float) -> list[Path]:
    """The DDPMPipeline folder ``src`` as fp16 safetensors files of <= ``max_mb`` MB (10^6 bytes) each, in
    diffusers' sharded layout (unet/diffusion_pytorch_model.safetensors.index.json + numbered files), plus
    its scheduler/, model_index.json and labelgen's generator_config.json. Returns every file written."""
    import torch
    from diffusers import UNet2DModel

    partial = dest.with_name(dest.name + ".partial")
    unet = UNet2DModel.from_pretrained(str(src / "unet"), torch_dtype=torch.float16)
    limit = int(max_mb * 1e6)
    shard = limit
    for _ in range(20):  # diffusers' shard size counts tensor bytes, not each file's safetensors header: shrink to fit
        shutil.rmtree(partial, ignore_errors=True)
        unet.save_pretrained(partial / "unet", safe_serialization=True, max_shard_size=shard)
        largest = max(p.stat().st_size for p in (partial / "unet").iterdir())
        if largest <= limit:
            break
        shard = int(shard * 0.9)
    else:
        shutil.rmtree(partial)
        raise StepFailed(f"cannot pack {src}/unet into files of <= {max_mb} MB (a single tensor is larger)")
    copy_pipeline_rest(src, partial)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return sorted(p for p in dest.rglob("*") if p.is_file())


def join_packed(packed: Path, dest: Path) -> Path:
    """A packed folder -> a DDPMPipeline folder with one fp16 weights file (what train-generator --export-fp16
    writes). Not needed to use it (labelgen and diffusers load the sharded folder as it is)."""
    import torch
    from diffusers import UNet2DModel

    if dest.exists():
        raise SystemExit(f"error: {dest}: already exists")
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    unet = UNet2DModel.from_pretrained(str(packed / "unet"), torch_dtype=torch.float16)
    unet.save_pretrained(partial / "unet", safe_serialization=True)
    copy_pipeline_rest(packed, partial)
    partial.rename(dest)
    return dest


def copy_pipeline_rest(src: Path, dest: Path) -> None:
    from labelgen.generators.base import CONFIG_NAME

    shutil.copytree(src / "scheduler", dest / "scheduler")
    for name in ("model_index.json", CONFIG_NAME):
        if (src / name).is_file():
            shutil.copy(src / name, dest / name)


def same_unet(a: Path, b: Path) -> bool:
    """Do two DDPMPipeline folders hold the same UNet weights (bit for bit)?"""
    import torch
    from diffusers import UNet2DModel

    sa = UNet2DModel.from_pretrained(str(a / "unet")).state_dict()
    sb = UNet2DModel.from_pretrained(str(b / "unet")).state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- --tiny data
def make_tiny_ccp(root: Path, size_hw: tuple[int, int], seed: int = 0) -> None:
    """A CCP-like folder as `labelgen data import-ccp` lays it out (CCP-8 classes.json, split folders with
    images/ and masks/), a few made-up "people": a skin-coloured head, hair, upper and lower garments,
    shoes on a gradient background."""
    import numpy as np

    from labelgen.data.ccp import CCP8_CLASSES
    from labelgen.data.io import write_png

    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    CCP8_CLASSES.save(partial / "classes.json")
    colours = {1: (224, 172, 140), 2: (60, 40, 30), 3: (40, 90, 200), 4: (30, 30, 60), 6: (20, 20, 20), 7: (200, 180, 40)}
    h, w = size_hw
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    rng = np.random.default_rng(seed)
    k = 0
    for split, count in TINY_SPLITS.items():
        for _ in range(count):
            k += 1
            cx = 0.5 + rng.uniform(-0.1, 0.1)
            mask = np.zeros((h, w), np.uint8)
            parts = ((2, (yy - 0.10) ** 2 / 0.006 + (xx - cx) ** 2 / 0.02 < 1),  # hair
                     (1, (yy - 0.15) ** 2 / 0.005 + (xx - cx) ** 2 / 0.012 < 1),  # face
                     (3, (yy > 0.22) & (yy < 0.55) & (abs(xx - cx) < 0.22)),
                     (4, (yy >= 0.55) & (yy < 0.88) & (abs(xx - cx) < 0.15)),
                     (6, (yy >= 0.88) & (yy < 0.95) & (abs(xx - cx) < 0.18)),
                     (7, (yy - 0.4) ** 2 / 0.002 + (xx - cx - 0.25) ** 2 / 0.004 < 1))  # a bag
            for cls, region in parts:
                mask[region] = cls
            image = (np.stack([yy * 120 + 60, xx * 80 + 100, 160 - yy * 60], -1)).astype(np.float32)
            for cls, colour in colours.items():
                image[mask == cls] = np.array(colour) * rng.uniform(0.8, 1.2)
            image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
            write_png(partial / split / "images" / f"{k:04d}.png", image)
            if split != "unlabeled":
                write_png(partial / split / "masks" / f"{k:04d}.png", mask, CCP8_CLASSES.palette)
    partial.rename(root)


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["join"]:
        p = argparse.ArgumentParser(prog="gpu_check.py join", description=join_packed.__doc__)
        p.add_argument("packed", type=Path)
        p.add_argument("dest", type=Path)
        a = p.parse_args(argv[1:])
        print(join_packed(a.packed, a.dest))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ccp", type=Path, default=None, help="CCP imported at 96x64 (labelgen data import-ccp --size 96x64)")
    p.add_argument("--minutes", type=float, default=2.0, help="train-generator's time limit")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"),
                   help="output folder [default: $OUT or ./gpu_check_out]")
    p.add_argument("--tiny", action="store_true", help="the same steps on CPU with tiny sizes (made-up data)")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of the steps (to rerun some)")
    a = p.parse_args(argv)
    import labelgen  # noqa: F401  (torchvision shim before diffusers)
    import torch

    if not a.tiny and not torch.cuda.is_available():
        print("error: no CUDA device (use --tiny for the CPU rehearsal)", file=sys.stderr)
        return 2
    if not a.tiny and a.ccp is None:
        print("error: --ccp CCP96 is required (a folder from `labelgen data import-ccp --size 96x64`)", file=sys.stderr)
        return 2
    out = a.out.resolve()
    sizes = TINY if a.tiny else GPU
    minutes = TINY_MINUTES if a.tiny and a.minutes == p.get_default("minutes") else a.minutes
    ccp = (a.ccp or out / "ccp").resolve()
    check = Check(out, ccp, sizes, minutes, a.tiny, "python bench/gpu_check.py " + " ".join(argv))
    chosen = a.steps.split(",")
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        print(f"error: unknown step {unknown[0]!r} (one of {', '.join(STEPS)})", file=sys.stderr)
        return 2
    previous = out / "gpu_check.json"
    if previous.is_file() and set(chosen) != set(STEPS):  # a rerun of some steps keeps the others' records
        check.record["steps"] = json.loads(previous.read_text()).get("steps", {})
    for name in STEPS:
        if name in chosen:
            check.step(name, getattr(check, name))
    check.save()
    failed = [n for n in chosen if check.record["steps"][n]["status"] != "ok"]
    print(json.dumps(check.record["steps"], indent=1))
    print(f"[gpu_check] {len(chosen) - len(failed)}/{len(chosen)} steps ok in {check.record['total_seconds']:.0f} s "
          f"-> {out / 'gpu_check.json'}" + (f"; not ok: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

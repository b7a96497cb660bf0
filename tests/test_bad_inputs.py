"""Every bad input through the real command lines (issue 11): exit status 2, exactly one line on stderr
(``error: ...``) naming the offending file or option, no traceback, and the folders the command was
pointed at exactly as they were before it ran (nothing half-written, no empty output folder).

The cases run in this process through ``labelgen.cli.main`` / ``labelgen.student.cli.main`` (the same
error boundary, ``labelgen.cli.run_click``) with stderr captured, so the table stays fast; a few run as
real subprocesses of the console programs (``SUBPROCESS``). Disk-full and read-only file systems are
simulated by making the write calls fail with ENOSPC / EROFS (the tests run as root: permissions would
not stop them).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from labelgen.student.testing import CLASSES as STUDENT_CLASSES, make_folder, make_shards, scene
from teacher_fakes import CLASSES, REPO, annotated_workspace, render, subprocess_env, train_workspace_heads
from test_import_export import make_coco, make_labelstudio

BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ bad files, made in code
def bomb_png(path: Path, side: int = 14000) -> Path:
    """A tiny PNG that claims ``side`` x ``side`` pixels (a "decompression bomb": 196 M pixels for 14000)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" + b"\0" * side  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def good_png(path: Path, seed: int = 40, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(seed, size)).save(path)
    return path


def corrupt_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return path


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under ``roots``: path -> (kind, size, mtime_ns). A run's lock file (an flock
    holding its pid, labelgen.run.RunLock) is no data: a folder that was there keeps it after any run."""
    from labelgen.run import LOCK_NAME

    seen: dict[str, tuple] = {}
    for root in roots:
        if not root.exists():
            continue
        seen[str(root)] = ("dir" if root.is_dir() else "file", 0, 0)
        for path in sorted(root.rglob("*")) if root.is_dir() else []:
            if path.name == LOCK_NAME and path.is_file():
                continue
            st = path.stat()
            seen[str(path)] = ("dir", 0, 0) if path.is_dir() else ("file", st.st_size, st.st_mtime_ns)
    return seen


# ------------------------------------------------------------------ shared inputs (made once)
@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    from labelgen.heads.train import TrainConfig
    from labelgen.student.train import TrainOptions, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bad-inputs")
    ws = annotated_workspace(root / "ws", backend="FakeDiffusion", count=2)
    train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=64), progress=False, log=lambda *a: None)
    data = make_folder(root / "data", 4, (32, 32), split="train").parent
    make_folder(root / "data", 2, (32, 32), split="val", seed0=50)
    shards = make_shards(root / "shards", 4, (32, 32))
    run = train(TrainOptions(mode="supervised", data=str(data / "train"), out=str(root / "run"), encoder="resnet18",
                             image_size=(32, 32), batch_size=2, max_steps=1, progress=False, warmup_steps=0),
                log=lambda *a: None).run_dir
    return {"root": root, "ws": ws.root, "data": data, "shards": shards, "run": run,
            "ccp": Path(__file__).parent / "fixtures" / "ccp_mini"}


def copy_ws(env, t: Path) -> Path:
    shutil.copytree(env["ws"], t / "w", ignore=shutil.ignore_patterns(".lock"))
    return t / "w"


# ---- set-ups: (env, case folder) -> None; they make the bad input inside the case folder
def images_with_bomb(env, t):
    good_png(t / "imgs" / "a.png")
    bomb_png(t / "imgs" / "b.png")


def images_with_large(env, t):
    """10000 x 10000: over Pillow's bound, under twice it (where Pillow only warns, on stderr)."""
    good_png(t / "imgs" / "a.png")
    bomb_png(t / "imgs" / "b.png", side=10000)


def images_with_corrupt_third(env, t):
    for i, name in enumerate(("a", "b")):
        good_png(t / "imgs" / f"{name}.png", 40 + i)
    corrupt_png(t / "imgs" / "c.png")


def workspace_importing_bad_second(env, t):
    copy_ws(env, t)
    for i, name in enumerate(("a", "b", "c", "d")):
        good_png(t / "imgs" / f"{name}.png", 40 + i, 64)
    corrupt_png(t / "imgs" / "b.png")


def dataset_with_bomb(env, t):
    shutil.copytree(env["data"], t / "ds")
    bomb_png(t / "ds" / "val" / "images" / "0001.png")


def dataset_red_colour(env, t):
    shutil.copytree(env["data"], t / "ds")
    classes = json.loads((t / "ds" / "classes.json").read_text())
    classes["classes"][1]["color"] = "red"
    (t / "ds" / "classes.json").write_text(json.dumps(classes))


def workspace_red_colour(env, t):
    w = copy_ws(env, t)
    config = json.loads((w / "workspace.json").read_text())
    config["classes"][1]["color"] = "red"
    (w / "workspace.json").write_text(json.dumps(config))


def a_file(env, t):
    (t / "file").write_text("not a folder\n")


def truncated_head(env, t):
    head = copy_ws(env, t) / "heads" / "head.safetensors"
    head.write_bytes(head.read_bytes()[:100])


def empty_head(env, t):
    (copy_ws(env, t) / "heads" / "head.safetensors").write_bytes(b"")


def head_config_mismatch(env, t):
    config_path = copy_ws(env, t) / "heads" / "head_config.json"
    config = json.loads(config_path.read_text())
    config["hidden"] = [7, 5]  # other layer sizes than the saved weights
    config_path.write_text(json.dumps(config))


def shards_with_corrupt_png(env, t):
    from labelgen.data.shards import ShardSample, ShardWriter

    samples = [ShardSample(f"s{i:06d}", *scene(i, (32, 32)), {}) for i in range(4)]
    writer = ShardWriter(t / "shards", STUDENT_CLASSES)
    writer.write_shard(0, encoded=[[(n, b"not a png" if n == "s000001.png" else p) for n, p in encode(s)]
                                   for s in samples])
    writer.write_manifest()


def shards_of(*shards: tuple[int, ...]):
    """A shard set {t}/shards whose shard i holds the scenes numbered ``shards[i]`` (keys s<number>): a
    number given twice is a duplicate key."""
    def setup(env, t):
        from labelgen.data.shards import ShardSample, ShardWriter

        writer = ShardWriter(t / "shards", STUDENT_CLASSES)
        for shard, numbers in enumerate(shards):
            writer.write_shard(shard, [ShardSample(f"s{i:06d}", *scene(i, (32, 32)), {}) for i in numbers])
        writer.write_manifest()
    return setup


def shards_edited(edit: Callable[[Path], object]):
    """A finished 8-sample set {t}/shards (2 shards) changed by ``edit(folder)``."""
    def setup(env, t):
        edit(make_shards(t / "shards", 8, (32, 32)))
    return setup


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def claim_size(tar: Path, size: int) -> None:
    """The first member's tar header claims ``size`` bytes (its checksum fixed, so tarfile believes it)."""
    data = bytearray(tar.read_bytes())
    data[124:136] = b"%011o\0" % size
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    tar.write_bytes(bytes(data))


def edit_json(path: Path, edit: Callable[[object], object]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def outside_manifest_shard(folder: Path) -> None:
    """manifest.json names a shard outside the set's folder (a copy of its first shard)."""
    shutil.copy(folder / "000000.tar", folder.parent / "outside.tar")
    edit_json(folder / "manifest.json", lambda m: m["shards"][0].update(shard="../outside.tar"))


def rle_chars(value: int, chunks: int) -> str:
    """``value`` as ``chunks`` characters of COCO's compressed RLE (5 bits each, 0x20: more follow; the last
    one's 0x10 the sign)."""
    return "".join(chr(((value >> 5 * k) & 0x1F | (0x20 if k < chunks - 1 else 0)) + 48) for k in range(chunks))


def encode(sample):
    from labelgen.data.shards import encode_sample

    return encode_sample(sample)


def ccp_with(transform: Callable[[np.ndarray], np.ndarray]):
    def setup(env, t):
        import scipy.io

        shutil.copytree(env["ccp"], t / "ccp")
        mat = t / "ccp" / "annotations" / "pixel-level" / "0002.mat"
        gt = scipy.io.loadmat(str(mat))["groundtruth"]
        scipy.io.savemat(str(mat), {"groundtruth": transform(gt)})
    return setup


def json_fixture(make: Callable[[Path], tuple], folder: str):
    """Set-up factories ``with(edit)``: ``make({t}/folder)`` (its first return value: the JSON file), the
    JSON then changed by ``edit(data, t)``."""
    def with_edit(edit: Callable[[object, Path], object]):
        def setup(env, t):
            edit_json(make(t / folder)[0], lambda data: edit(data, t))
        return setup
    return with_edit


# tests/test_import_export.py's fixtures: COCO in {t}/coco (images im1, im2; annotation 10: uncompressed RLE,
# 11: polygon, 12: compressed RLE); Label Studio in {t}/ls (task 1: brush result b, polygon result p on photo.png)
coco_with = json_fixture(make_coco, "coco")
labelstudio_with = json_fixture(make_labelstudio, "ls")


def polygon_result(tasks: list) -> dict:
    return tasks[0]["annotations"][1]["result"][1]


def outside_copy(t: Path, of: Path) -> Path:
    """A copy of image ``of`` beside (outside) the dataset folder: {t}/outside.png."""
    shutil.copy(of, t / "outside.png")
    return t / "outside.png"


def symlink_out(image: Path, t: Path) -> None:
    """Replace ``image`` in a dataset by a symlink to a copy of it outside the dataset folder."""
    target = outside_copy(t, image)
    image.unlink()
    image.symlink_to(target)


def fail_writes(code: int):
    """Every rename into place (the last step of every atomic write) fails with ``code``."""
    def patch(monkeypatch):
        def refuse(src, dst, *a, **k):
            raise OSError(code, os.strerror(code), str(dst))
        monkeypatch.setattr(os, "replace", refuse)
    return patch


def full_disk_safetensors(monkeypatch):
    """The disk fills while safetensors writes: what its Rust writer raises then (a SafetensorError, not an
    OSError; the message is the one a full tmpfs gives)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def refuse(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", refuse)


def heads_full_disk(monkeypatch):
    """train-heads whose disk fills when the trained heads are saved, without its progress bar (shown after
    0.5 s: on stderr before the error line)."""
    import labelgen.heads.train as heads_train

    full_disk_safetensors(monkeypatch)
    bar = heads_train.progress_bar
    monkeypatch.setattr(heads_train, "progress_bar", lambda *a, **k: bar(*a, **{**k, "disable": True}))


def student_config_with(**fields):
    """A copy {t}/run of the student run whose student_config.json has ``fields``."""
    def setup(env, t):
        shutil.copytree(env["run"], t / "run", ignore=shutil.ignore_patterns(".lock"))
        path = t / "run" / "student_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return setup


def student_nan_weights(env, t):
    """A copy {t}/run of the student run whose segmentation head's weights are NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(env["run"], t / "run", ignore=shutil.ignore_patterns(".lock"))
    tensors = load_file(t / "run" / "model.safetensors")
    for name in [n for n in tensors if n.startswith("segmentation_head.")]:
        tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, t / "run" / "model.safetensors")


def ddpm_sample_size(size: int):
    """A tiny DDPM folder {t}/ddpm (diffusers layout) whose unet/config.json says ``sample_size``: ``size``."""
    def setup(env, t):
        from labelgen.generators import create_generator
        from test_generators import DDPM_UNET

        create_generator("ddpm", unet_config=DDPM_UNET, timesteps=[50]).save_pretrained(t / "ddpm")
        config = t / "ddpm" / "unet" / "config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "sample_size": size}))
    return setup


def adm_nan_weights(env, t):
    """A tiny guided-diffusion checkpoint {t}/adm.pt (flags in adm.json beside it) with one NaN weight."""
    from labelgen.generators import create_generator
    from test_generators import ADM_TINY

    state = create_generator("adm", flags=ADM_TINY, timesteps=[50]).unet.state_dict()
    state["out.2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, t / "adm.pt")
    (t / "adm.json").write_text(json.dumps(ADM_TINY))


# ------------------------------------------------------------------ the table
@dataclass
class Case:
    id: str
    argv: list[str]  # {ws} {run} {data} {shards} {ccp}: shared inputs; {t}: this case's folder
    names: str  # the offending file or option the one line must name
    setup: Callable | None = None
    patch: Callable | None = None  # monkeypatch(...) before running (in-process cases only)
    program: str = "labelgen"
    subprocess: bool = False
    watch: tuple[str, ...] = ()  # shared inputs (by key) that must not change either
    extra: dict = field(default_factory=dict)


SYNTH = ["synthesize", "-w", "{t}/w", "--n", "2", "--out", "{t}/out"]
COCO_IMPORT = ["data", "import", "{t}/coco", "--format", "coco", "--out", "{t}/o"]
LS_IMPORT = ["data", "import", "{t}/ls", "--format", "labelstudio", "--out", "{t}/o"]
TRAIN_GENERATOR = ["train-generator", "--data", "{data}/train", "--out", "{t}/g", "--steps", "1", "--batch-size", "2",
                   "--sample-every", "0", "--quiet", "--channels", "8,16"]
STUDENT_TRAIN = ["train", "--mode", "supervised", "--encoder", "resnet18", "--image-size", "32x32", "--batch-size",
                 "2", "--max-steps", "1", "--no-progress", "--out", "{t}/x"]

CASES = [
    # a decompression bomb (14000 x 14000 grey PNG, 23 KB) wherever images are read
    Case("bomb-import", ["import", "-w", "{t}/w", "--images", "{t}/imgs"], "b.png",
         lambda e, t: (copy_ws(e, t), images_with_bomb(e, t)), subprocess=True),
    Case("bomb-from-images", ["synthesize", "-w", "{ws}", "--from-images", "{t}/imgs", "--out", "{t}/out"], "b.png",
         images_with_bomb, watch=("ws",)),
    Case("bomb-eval", ["eval", "--checkpoint", "{run}", "--data", "{t}/ds/val", "--out", "{t}/ev"], "0001.png",
         dataset_with_bomb, program="student", watch=("run",)),
    Case("large-image-predict", ["predict", "--checkpoint", "{run}", "--images", "{t}/imgs", "--out", "{t}/pred"],
         "b.png", images_with_large, program="student", watch=("run",)),
    Case("bomb-predict", ["predict", "--checkpoint", "{run}", "--images", "{t}/imgs", "--out", "{t}/pred"], "b.png",
         images_with_bomb, program="student", watch=("run",)),
    # class files
    Case("colour-red-classes-json", ["data", "info", "{t}/ds/train"], "classes.json", dataset_red_colour,
         subprocess=True),
    Case("colour-red-student-train", [*STUDENT_TRAIN, "--data", "{t}/ds/train"], "classes.json", dataset_red_colour,
         program="student"),
    Case("colour-red-workspace-json", ["sample", "-w", "{t}/w", "--n", "1"], "workspace.json", workspace_red_colour),
    # --out / -w naming an existing file
    Case("out-file-synthesize", ["synthesize", "-w", "{ws}", "--n", "2", "--out", "{t}/file"], "file", a_file,
         watch=("ws",)),
    Case("out-file-predict", ["predict", "--checkpoint", "{run}", "--images", "{data}/val/images", "--out",
                              "{t}/file"], "file", a_file, program="student", watch=("run",)),
    Case("out-file-eval", ["eval", "--checkpoint", "{run}", "--data", "{data}/val", "--out", "{t}/file"], "file",
         a_file, program="student", watch=("run",)),
    Case("out-file-student-train", [*STUDENT_TRAIN[:-1], "{t}/file", "--data", "{data}/train"], "file", a_file,
         program="student"),
    Case("out-file-train-generator", ["train-generator", "--data", "{data}/train", "--out", "{t}/file", "--steps",
                                      "1"], "file", a_file),
    Case("out-file-import-ccp", ["data", "import-ccp", "--src", "{ccp}", "--out", "{t}/file"], "file", a_file),
    Case("w-file-sample", ["sample", "-w", "{t}/file", "--n", "1"], "file", a_file),
    Case("w-file-init", ["init", "{t}/file", "--generator", "teacher_fakes:FakeGAN", "--classes", "a,b"], "file",
         a_file),
    # learning rates
    Case("lr-negative-train-heads", ["train-heads", "-w", "{t}/w", "--lr", "-1"], "--lr", copy_ws),
    Case("lr-nan-train-heads", ["train-heads", "-w", "{t}/w", "--lr", "nan"], "--lr", copy_ws, subprocess=True),
    Case("lr-nan-student", [*STUDENT_TRAIN, "--data", "{data}/train", "--lr", "nan"], "--lr", program="student"),
    Case("lr-negative-train-generator", ["train-generator", "--data", "{data}/train", "--out", "{t}/g", "--lr", "-1"],
         "--lr"),
    Case("lr-inf-train-generator", ["train-generator", "--data", "{data}/train", "--out", "{t}/g", "--lr", "inf"],
         "--lr"),
    # "internal error" before (issue 33 item 10): options, a student run's config, generator checkpoints, a full
    # disk; the train-generator runs left OUT/train/log.csv + tb/, train-heads truncated the old heads' log first
    Case("batch-size-1-student-train", [*STUDENT_TRAIN, "--data", "{data}/train", "--batch-size", "1"], "--batch-size",
         program="student"),
    Case("pixels-per-image-huge-train-heads", ["train-heads", "-w", "{t}/w", "--epochs", "1", "--pixels-per-image",
                                               "100000000"], "--pixels-per-image", copy_ws, subprocess=True),
    Case("checkpoint-every-0-train-generator", [*TRAIN_GENERATOR, "--checkpoint-every", "0"], "--checkpoint-every"),
    Case("layers-per-block-0-train-generator", [*TRAIN_GENERATOR, "--layers-per-block", "0"], "--layers-per-block"),
    Case("device-tpu-train-generator", [*TRAIN_GENERATOR, "--device", "tpu"], "--device"),
    Case("z-dim-0-train-generator", [*TRAIN_GENERATOR[:-2], "--backend", "stylegan2", "--channels", "16", "--z-dim",
                                     "0"], "--z-dim"),
    Case("opset-99-export", ["export", "--checkpoint", "{run}", "--onnx", "{t}/s.onnx", "--opset", "99"], "--opset",
         program="student", watch=("run",)),
    Case("image-size-huge-student-config", ["predict", "--checkpoint", "{t}/run", "--images", "{data}/val/images",
                                            "--out", "{t}/pred"], "student_config.json",
         student_config_with(image_size=[100000, 100000]), program="student"),
    Case("sample-size-huge-ddpm-init", ["init", "{t}/w", "--generator", "ddpm", "--checkpoint", "{t}/ddpm",
                                        "--classes", "a,b"], "{t}/ddpm", ddpm_sample_size(1000000)),
    Case("enospc-train-heads", ["train-heads", "-w", "{t}/w", "--epochs", "1"], "head.safetensors", copy_ws,
         patch=heads_full_disk),
    # nonsense accepted before (issue 33 item 11)
    Case("class-balance-nan-train-heads", ["train-heads", "-w", "{t}/w", "--epochs", "1", "--class-balance", "nan"],
         "--class-balance", copy_ws),
    Case("truncation-nan-sample", ["sample", "-w", "{t}/w", "--n", "1", "--truncation", "nan"], "--truncation",
         copy_ws),
    Case("truncation-minus-inf-sample", ["sample", "-w", "{t}/w", "--n", "1", "--truncation", "-inf"],
         "--truncation", copy_ws),
    Case("tolerance-nan-export", ["export", "--checkpoint", "{run}", "--onnx", "{t}/s.onnx", "--tolerance", "nan"],
         "--tolerance", program="student", watch=("run",)),
    Case("nan-weights-export", ["export", "--checkpoint", "{t}/run", "--onnx", "{t}/s.onnx"], "s.onnx",
         student_nan_weights, program="student"),
    Case("nan-weights-adm-init", ["init", "{t}/w", "--generator", "adm", "--checkpoint", "{t}/adm.pt", "--classes",
                                  "a,b"], "adm.pt", adm_nan_weights),
    Case("time-limit-nan-train-generator", [*TRAIN_GENERATOR, "--time-limit", "nan"], "--time-limit"),
    Case("feature-layers-negative-init", ["init", "{t}/w", "--generator", "dcgan", "--classes", "a,b",
                                          "--feature-layers", "-1"], "--feature-layers"),
    Case("feature-layers-twice-init", ["init", "{t}/w", "--generator", "teacher_fakes:FakeGAN", "--classes", "a,b",
                                       "--feature-layers", "1,1"], "--feature-layers"),
    Case("classes-empty-name-init", ["init", "{t}/w", "--generator", "teacher_fakes:FakeGAN", "--classes", "a,,b"],
         "--classes"),
    Case("classes-twice-init", ["init", "{t}/w", "--generator", "teacher_fakes:FakeGAN", "--classes", "a,b,a"],
         "--classes"),
    # the workspace's head weights
    Case("head-truncated", SYNTH, "head.safetensors", truncated_head, subprocess=True),
    Case("head-empty", SYNTH, "head.safetensors", empty_head),
    Case("head-config-mismatch", SYNTH, "head.safetensors", head_config_mismatch),
    # shard sets
    Case("shard-corrupt-png", [*STUDENT_TRAIN, "--data", "{t}/shards"], "s000001.png", shards_with_corrupt_png,
         program="student"),
    # CCP import: sizes, groundtruth
    Case("ccp-size-huge", ["data", "import-ccp", "--src", "{ccp}", "--out", "{t}/o", "--size", "100000x100000"],
         "--size", subprocess=True),
    Case("ccp-size-pixels", ["data", "import-ccp", "--src", "{ccp}", "--out", "{t}/o", "--size", "16000x16000"],
         "--size"),
    Case("ccp-float-groundtruth", ["data", "import-ccp", "--src", "{t}/ccp", "--out", "{t}/o", "--size", "24x16",
                                   "--limit", "2", "--workers", "1"], "0002.mat",
         ccp_with(lambda gt: gt.astype(np.float64) + 0.4)),
    Case("ccp-negative-groundtruth", ["data", "import-ccp", "--src", "{t}/ccp", "--out", "{t}/o", "--size", "24x16",
                                      "--limit", "2", "--workers", "1"], "0002.mat",
         ccp_with(lambda gt: gt.astype(np.int16) - 3)),
    # a full or read-only disk
    Case("enospc-import-ccp", ["data", "import-ccp", "--src", "{ccp}", "--out", "{t}/o", "--size", "24x16", "--limit",
                               "1", "--workers", "1"], "{t}/o", patch=fail_writes(errno.ENOSPC)),
    Case("erofs-synthesize", ["synthesize", "-w", "{ws}", "--n", "2", "--out", "{t}/out"], "{t}/out",
         patch=fail_writes(errno.EROFS), watch=("ws",)),
    Case("enospc-import", ["import", "-w", "{t}/w", "--images", "{t}/imgs"], "{t}/w",
         lambda e, t: (copy_ws(e, t), good_png(t / "imgs" / "a.png")), patch=fail_writes(errno.ENOSPC)),
    Case("enospc-predict", ["predict", "--checkpoint", "{run}", "--images", "{data}/val/images", "--out", "{t}/pred"],
         "{t}/pred", patch=fail_writes(errno.ENOSPC), program="student", watch=("run",)),
    # smaller ones
    Case("import-bad-second-of-four", ["import", "-w", "{t}/w", "--images", "{t}/imgs"], "b.png",
         workspace_importing_bad_second),
    Case("predict-corrupt-third", ["predict", "--checkpoint", "{run}", "--images", "{t}/imgs", "--out", "{t}/pred"],
         "c.png", images_with_corrupt_third, program="student", watch=("run",)),
    Case("eval-dataset-root", ["eval", "--checkpoint", "{run}", "--data", "{data}", "--out", "{t}/ev"], "split",
         program="student", watch=("run",)),
    # NaN coordinates (issue 33 item 3): pycocotools segfaulted (COCO) or allocated ~23 GB (Label Studio)
    Case("coco-polygon-nan", COCO_IMPORT, "annotation 11",
         coco_with(lambda d, t: d["annotations"][1]["segmentation"][0].__setitem__(2, float("nan"))), subprocess=True),
    Case("labelstudio-point-nan", LS_IMPORT, "result p",
         labelstudio_with(lambda ts, t: polygon_result(ts)["value"]["points"][1].__setitem__(0, float("nan"))),
         subprocess=True),
    # paths out of the output or the dataset folder (issue 33 item 8)
    Case("split-parent-import", [*COCO_IMPORT, "--split", "../x"], "--split", coco_with(lambda d, t: None)),
    Case("split-absolute-import", [*COCO_IMPORT, "--split", "{t}/abs"], "--split",
         coco_with(lambda d, t: good_png(t / "abs.partial" / "unrelated.png"))),  # was deleted as the split's .partial
    Case("split-parent-export", ["data", "export", "{data}/train", "{t}/o", "--format", "folder", "--split", "../x"],
         "--split", watch=("data",)),
    Case("coco-file-name-parent", COCO_IMPORT, "../outside.png",
         coco_with(lambda d, t: (outside_copy(t, t / "coco" / "images" / "im2.png"),
                                 d["images"][1].update(file_name="../outside.png")))),
    Case("coco-file-name-absolute", COCO_IMPORT, "{t}/outside.png", coco_with(lambda d, t: d["images"][1].update(
             file_name=str(outside_copy(t, t / "coco" / "images" / "im2.png"))))),
    Case("coco-symlink-out", COCO_IMPORT, "im2.png",
         coco_with(lambda d, t: symlink_out(t / "coco" / "images" / "im2.png", t))),
    Case("labelstudio-symlink-out", LS_IMPORT, "photo.png",
         labelstudio_with(lambda ts, t: symlink_out(t / "ls" / "photo.png", t))),
    # duplicate ids and keys (issue 33 item 7): one image painted with another's polygons, a sample trained twice
    Case("coco-duplicate-image-id", COCO_IMPORT, "duplicate image ids 1",
         coco_with(lambda d, t: d["images"][1].update(id=1))),
    Case("shard-duplicate-key-train", [*STUDENT_TRAIN, "--data", "{t}/shards"], "s000002", shards_of((0, 1, 2), (2, 3)),
         program="student"),
    Case("shard-duplicate-key-export", ["data", "export", "{t}/shards", "{t}/o", "--format", "coco"], "s000002",
         shards_of((0, 1, 2), (2, 3))),
    Case("shard-duplicate-key-in-one-shard", ["data", "export", "{t}/shards", "{t}/o", "--format", "folder"], "s000001",
         shards_of((0, 1, 2, 1))),
    # "internal error" before (issue 33 item 10): shard sets
    Case("export-truncated-tar", ["data", "export", "{t}/shards", "{t}/o", "--format", "folder"], "000000.tar",
         shards_edited(lambda f: truncate(f / "000000.tar"))),
    Case("export-tar-header-8gb", ["data", "export", "{t}/shards", "{t}/o", "--format", "folder"], "000000.tar",
         shards_edited(lambda f: claim_size(f / "000000.tar", 8_000_000_000)), subprocess=True),  # read 8 GB before
    Case("info-garbage-shard-index", ["data", "info", "{t}/shards"], "000001.json",
         shards_edited(lambda f: (f / "000001.json").write_text('["garbage"]'))),
    Case("export-manifest-shard-outside", ["data", "export", "{t}/shards", "{t}/o", "--format", "folder"],
         "manifest.json", shards_edited(outside_manifest_shard)),
    Case("export-manifest-classes-garbage", ["data", "export", "{t}/shards", "{t}/o", "--format", "folder"],
         "manifest.json", shards_edited(lambda f: edit_json(f / "manifest.json", lambda m: m.update(classes=5)))),
    # COCO and Label Studio fields of the wrong type
    Case("coco-polygon-strings", COCO_IMPORT, "annotation 11", coco_with(
        lambda d, t: d["annotations"][1].update(segmentation=[["2", "2", "20", "2", "twenty", "14"]]))),
    Case("coco-rle-size-string", COCO_IMPORT, "annotation 10",
         coco_with(lambda d, t: d["annotations"][0]["segmentation"].update(size="24x32"))),
    # runs 300, 200, 100, 168 (the image's 24 x 32): the last delta (-32) in 32 characters, which pycocotools'
    # C parser reads as another number ("Invalid RLE mask representation")
    Case("coco-rle-pycocotools-disagrees", COCO_IMPORT, "annotation 12", coco_with(
        lambda d, t: d["annotations"][2]["segmentation"].update(
            counts=rle_chars(300, 2) + rle_chars(200, 2) + rle_chars(100, 2) + rle_chars(168 - 200, 32)))),
    Case("labelstudio-width-string", LS_IMPORT, "result p",
         labelstudio_with(lambda ts, t: polygon_result(ts).update(original_width="x"))),
    Case("labelstudio-result-not-object", LS_IMPORT, "task 1: result 3",
         labelstudio_with(lambda ts, t: ts[0]["annotations"][1]["result"].append(5))),
    Case("labelstudio-value-list", LS_IMPORT, "result p",
         labelstudio_with(lambda ts, t: polygon_result(ts).update(value=[[25, 50], [75, 50], [75, 100]]))),
    # nonsense accepted before (issue 33 item 11): "car" became the class "c"
    Case("labelstudio-label-string", LS_IMPORT, "result p",
         labelstudio_with(lambda ts, t: polygon_result(ts)["value"].update(polygonlabels="car"))),
]


def _fill(arg: str, env, t: Path) -> str:
    return arg.format(t=t, **{k: v for k, v in env.items() if isinstance(v, Path)})


def _run_in_process(case: Case, argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    from labelgen.cli import main as labelgen_main
    from labelgen.student.cli import main as student_main

    monkeypatch.setenv("LABELGEN_WORKSPACE", "")
    monkeypatch.delenv("LABELGEN_DEBUG", raising=False)
    if case.patch:
        case.patch(monkeypatch)
    capsys.readouterr()
    code = 0
    try:
        (student_main if case.program == "student" else labelgen_main)(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        monkeypatch.undo()
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(case, env, tmp_path, capsys, monkeypatch):
    t = tmp_path / "case"
    t.mkdir()
    if case.setup:
        case.setup(env, t)
    argv = [_fill(a, env, t) for a in case.argv]
    watched = [t, *(env[k] for k in case.watch)]
    before = snapshot(*watched)
    if case.subprocess:
        proc = subprocess.run([str(BIN / case.program), *argv], capture_output=True, text=True, timeout=300,
                              env={**subprocess_env(), "LABELGEN_DEBUG": ""}, cwd=REPO)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = _run_in_process(case, argv, capsys, monkeypatch)
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert _fill(case.names, env, t) in lines[0], err
    after = snapshot(*watched)
    assert after == before, f"changed: {sorted(set(after.items()) ^ set(before.items()))}"

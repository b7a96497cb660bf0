"""Tiny deterministic generators for the teacher tests (heads, workspace, synthesis).

Images are a coloured disc and bar on a noisy background; the class of a pixel shows in its colour,
and the features are fixed random projections of the (average-pooled) image at three resolutions,
so a head can learn the segmentation from few images. ``layout(seed)`` gives the true mask
(0 background, 1 disc, 2 bar). Used as workspace backends "teacher_fakes:FakeGAN" /
"teacher_fakes:FakeDiffusion" (tests/ on PYTHONPATH, opted in with LABELGEN_PLUGINS=teacher_fakes: tests/conftest.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelgen.errors import LabelgenError
from labelgen.generators.base import Generator, GeneratorOutput

CLASS_COLOURS = np.array([[40, 150, 40], [210, 50, 40], [40, 60, 210]], dtype=np.float32)
CLASSES = "background,disc,bar"


def layout(seed: int, size: int = 32) -> np.ndarray:
    """True index mask uint8 [size, size] of seed's image."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    radius = rng.uniform(0.15, 0.28) * size
    bar_row = int(rng.uniform(0.05, 0.85) * size)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = 1
    mask[bar_row:bar_row + max(2, size // 8)] = 2
    return mask


def render(seed: int, size: int = 32) -> np.ndarray:
    """uint8 [size, size, 3] image of seed."""
    rng = np.random.default_rng(seed + 7_000_000)
    image = CLASS_COLOURS[layout(seed, size)] + rng.normal(0, 12, (size, size, 3))
    return np.clip(image, 0, 255).round().astype(np.uint8)


class FakeGAN(Generator):
    backend = "fake-gan"

    def __init__(self, size: int = 32, channels: tuple[int, ...] = (8, 8, 4), delay: float = 0.0):
        super().__init__()
        self.size = size
        self.delay = delay
        torch.manual_seed(1234)
        self.projections = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(c, 3) / 60.0) for c in channels)

    @property
    def resolution(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def feature_channels(self) -> list[int]:
        return [p.shape[0] for p in self.projections]

    @property
    def feature_strides(self) -> list[int]:
        return [2 ** (len(self.projections) - 1 - level) for level in range(len(self.projections))]

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:  # images [N, 3, H, W] in [-1, 1]
        delay = self.delay or float(os.environ.get("TEACHER_FAKES_DELAY", "0") or 0)  # slow runs for kill tests
        if delay:
            time.sleep(delay * images.shape[0])
        pixels = (images + 1) * 127.5 - 128
        out = []
        for level, proj in enumerate(self.projections):  # level 0: H/4, level 1: H/2, level 2: H
            pooled = F.avg_pool2d(pixels, 2 ** (len(self.projections) - 1 - level))
            out.append(torch.tanh(torch.einsum("oc,nchw->nohw", proj.detach(), pooled)))
        return out

    def sample(self, seeds: list[int], **options) -> GeneratorOutput:
        images = torch.from_numpy(np.stack([render(s, self.size) for s in seeds])).permute(0, 3, 1, 2).float() / 127.5 - 1
        return GeneratorOutput(images, self._features(images), [{"seed": int(s)} for s in seeds])

    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        return self.sample([int(r["seed"]) for r in recipes])

    @classmethod
    def from_checkpoint(cls, checkpoint, **options) -> "FakeGAN":
        if checkpoint is None:
            return cls(**options).eval()
        path = Path(checkpoint)
        if not path.is_dir() or not (path / "generator_config.json").is_file():
            raise LabelgenError(f"{path}: not a {cls.backend} checkpoint (expected a saved generator folder)")
        return cls.from_pretrained(path)


class FakeDiffusion(FakeGAN):
    backend = "fake-diffusion"
    can_encode_images = True

    def features_of_images(self, images: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
        return self._features(images)


# ---- helpers shared by the teacher tests ----
TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


def subprocess_env() -> dict[str, str]:
    """Environment for CLI subprocesses: fakes importable, one thread each (2 shared cores)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TESTS_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", LABELGEN_WORKSPACE="")
    return env


def kill_when_written(proc, marker: Path, timeout: float = 120.0) -> None:
    """SIGKILL ``proc`` (a CLI subprocess run slowly with TEACHER_FAKES_DELAY) once ``marker`` exists (a finished
    shard's index, say), as a kill at any moment would; the process must not have ended before."""
    import signal

    deadline = time.time() + timeout
    while not marker.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()


def train_workspace_heads(ws, config=None, head_type: str | None = None, **options):
    """What `labelgen train-heads` runs: labelgen.heads.train.train_heads with the workspace's teacher (its
    levels), annotations, head folder and settings (``head_type``: W/heads/<type>/), and feature store."""
    from labelgen.heads.train import train_heads

    folder, head = ws.head_settings(head_type)
    return train_heads(ws.teacher(head=False), ws, config, folder, head, store=ws.feature_store, **options)


def annotated_workspace(root: Path, backend: str = "FakeGAN", head: str = "pixel-mlp", count: int = 3,
                        ensemble: int | None = None, generator_options: dict | None = None):
    """A workspace on a fake generator with ``count`` generated images annotated with their true masks."""
    from labelgen.workspace import create_workspace

    ws = create_workspace(root, f"teacher_fakes:{backend}", CLASSES.split(","),
                          head={"type": head, "ensemble": ensemble or (3 if head == "pixel-mlp" else 1)},
                          generator_options=generator_options)
    for annotation_id in ws.sample_annotations(count, seed_start=0):
        ws.save_mask(annotation_id, layout(ws.read_annotation(annotation_id)[1]["seed"]))
    return ws


EVIL_PLUGIN = """from pathlib import Path
Path({marker!r}).write_text("evilplug ran")
from teacher_fakes import FakeGAN as Gen
"""


def evil_workspace(root: Path, marker: Path):
    """An annotated workspace whose workspace.json names the backend "evilplug:Gen", with an evilplug.py
    beside it that writes ``marker`` when imported (a folder someone else prepared: it must never run)."""
    import json

    from labelgen.workspace import CONFIG_NAME, Workspace

    annotated_workspace(root)
    config = json.loads((root / CONFIG_NAME).read_text())
    (root / CONFIG_NAME).write_text(json.dumps(dict(config, backend="evilplug:Gen")))
    (root / "evilplug.py").write_text(EVIL_PLUGIN.format(marker=str(marker)))
    return Workspace(root)

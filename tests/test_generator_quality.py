"""Knowing when the generator is good enough: train-generator's probe (--annotations W: k-fold mIoU of W's heads on
the EMA generator's features, printed and logged) and train-heads' warning when the teacher's held-out mIoU is below
the pixel baseline (the same heads on the photos' own pixels)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelgen.cli import main
from labelgen.run import read_log
from labelgen.training.common import TRAIN_DIR
from labelgen.training.train_generator import train_generator
from teacher_fakes import CLASSES, FakeDiffusion, FakeGAN, layout, render
from test_train_generator import _cli_error

SIZE = 16


# ---------------------------------------------------------------- generators whose features are worth nothing / all
class NoiseGAN(FakeGAN):
    """Images whose colour shows the class (teacher_fakes.render); features: the same noise for every image."""

    backend = "noise-gan"

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        n, _, h, w = images.shape
        return [torch.randn((n, c, h // s, w // s), generator=g)
                for c, s in zip(self.feature_channels, self.feature_strides)]


class OracleGAN(FakeGAN):
    """Images of pure noise (the class shows nowhere in the pixels); features: the true mask, one-hot."""

    backend = "oracle-gan"

    def __init__(self, size: int = 32):
        super().__init__(size, channels=(3, 3, 3))

    def sample(self, seeds, **options):
        from labelgen.generators.base import GeneratorOutput

        images = torch.stack([torch.from_numpy(np.random.default_rng(int(s)).integers(0, 256, (3, self.size, self.size)))
                              for s in seeds]).float() / 127.5 - 1
        onehot = torch.stack([F.one_hot(torch.from_numpy(layout(int(s), self.size)).long(), 3).permute(2, 0, 1)
                              for s in seeds]).float()
        features = [F.avg_pool2d(onehot, s) for s in self.feature_strides]
        return GeneratorOutput(images, features, [{"seed": int(s)} for s in seeds])


@pytest.fixture
def plugins(monkeypatch):
    """This module's generators as opted-in plug-ins (labelgen.generators.PLUGINS_ENV)."""
    monkeypatch.setenv("LABELGEN_PLUGINS", os.environ.get("LABELGEN_PLUGINS", "") + f",{__name__}")
    return __name__


def _annotated(root: Path, backend: str, count: int = 8):
    from labelgen.workspace import create_workspace

    ws = create_workspace(root, backend, CLASSES.split(","), head={"type": "pixel-mlp", "ensemble": 2})
    for annotation_id in ws.sample_annotations(count, seed_start=0):
        ws.save_mask(annotation_id, layout(ws.read_annotation(annotation_id)[1]["seed"]))
    return ws


@pytest.mark.parametrize("generator, warned", [("NoiseGAN", True), ("OracleGAN", False)])
def test_train_heads_warns_below_the_pixel_baseline(tmp_path, plugins, capsys, generator, warned):
    """Features that are noise score below the heads on the (colour-coded) pixels: one warning line; features that
    encode the mask, on photos whose pixels show nothing, score above: none."""
    ws = _annotated(tmp_path / "w", f"{plugins}:{generator}")
    main(["train-heads", "-w", str(ws.root), "--holdout", "3", "--epochs", "10", "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    line = next(line for line in out.splitlines() if "held-out mIoU" in line and "pixel baseline" in line)
    teacher = float(line.split("held-out mIoU ")[1].split()[0])
    baseline = float(line.split("pixel baseline ")[1].split(")")[0])
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    if warned:
        assert teacher < baseline - 0.2, line
        assert len(warnings) == 1 and "below the pixel baseline" in warnings[0], err
        assert f"{teacher:.4f}" in warnings[0] and f"{baseline:.4f}" in warnings[0] and "--init" in warnings[0]
    else:
        assert teacher > baseline + 0.2, line
        assert not [w for w in warnings if "baseline" in w], err


def test_pixel_baseline_is_the_same_heads_on_the_pixels(tmp_path):
    """holdout_baseline trains the teacher's head type on the pixel pyramid of the same annotations, holding out the
    same images (a teacher on generator features that copy the pixels scores what it scores)."""
    from labelgen.annotations import Annotations
    from labelgen.data.classes import ClassList
    from labelgen.quality import PIXEL_STRIDES, holdout_baseline, pixel_teacher
    from labelgen.heads.train import TrainConfig
    from labelgen.teacher import Teacher

    items = {f"a{s}": (render(s, SIZE), {"source": "real"}, layout(s, SIZE)) for s in range(6)}
    annotations = Annotations(ClassList.from_names(CLASSES.split(",")), items)
    config = TrainConfig(epochs=5)
    pixels = pixel_teacher((SIZE, SIZE))
    assert pixels.channels == [3] * len(PIXEL_STRIDES) and [f.reduction for f in pixels.feature_info] == [1, 4, 16]
    features = pixels.features(images=[items["a0"][0]])
    assert features[0].shape == (1, 3, SIZE, SIZE) and features[2].shape == (1, 3, 1, 1)
    from labelgen.heads.train import train_heads

    same = train_heads(Teacher(pixels.generator), annotations, config, None, {"type": "pixel-mlp"}, progress=False,
                       log=lambda s: None, holdout=2).holdout
    baseline = holdout_baseline(Teacher(FakeDiffusion(SIZE)), annotations, config, {"type": "pixel-mlp"}, 2)
    assert baseline.miou == pytest.approx(same.miou) and baseline.miou > 0.5


# ---------------------------------------------------------------- train-generator --annotations
def _photo_workspace(root: Path, count: int = 4):
    """A workspace of ``count`` real photos + masks (16x16, the class in the colour)."""
    from labelgen.workspace import create_workspace

    ws = create_workspace(root, "teacher_fakes:FakeDiffusion", CLASSES.split(","), generator_options={"size": SIZE},
                          head={"type": "pixel-mlp", "ensemble": 1})
    ws.add_photos((render(s, SIZE), layout(s, SIZE), {"source": "real"}) for s in range(count))
    return ws


def _gradients(folder: Path, n: int = 4) -> Path:
    from labelgen.data.io import write_png

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        write_png(folder / f"{i}.png", ((c0 * xx[..., None] + c1 * yy[..., None]) / (2 * SIZE)).astype(np.uint8))
    return folder


def test_probe_prints_and_logs_the_kfold_miou(tmp_path):
    """Every --probe-every minutes (here: every step) and at the end: one line, and the log's probe_miou column;
    a run from --init is probed before its first step too (what fine-tuning starts from)."""
    ws = _photo_workspace(tmp_path / "w")
    data = _gradients(tmp_path / "imgs")
    lines: list[str] = []
    kw = {"channels": (8, 16), "batch_size": 4, "sample_every": 0, "log_every": 1000, "device": "cpu",
          "annotations": str(ws.root), "echo": lines.append, "show_progress": False}
    summary = train_generator("ddpm", data, tmp_path / "gen", steps=2, probe_every_min=1e-6, **kw)
    assert any(line.startswith("probe: pixel-mlp heads, 4-fold over 4 annotated images") for line in lines), lines
    probes = [line for line in lines if line.startswith("probe at step")]
    assert [line.split(":")[0] for line in probes] == ["probe at step 1", "probe at step 2"], lines
    assert all("pixel baseline" in line for line in probes)
    rows = read_log(tmp_path / "gen" / TRAIN_DIR / "log.csv")
    assert [r["step"] for r in rows] == ["1", "2"]  # probe rows (log_every 1000: only the last step's besides)
    values = [float(r["probe_miou"]) for r in rows]
    assert all(0 <= v <= 1 for v in values) and summary["probe_miou"] == pytest.approx(values[-1], abs=1e-5)
    assert 0 < summary["probe_baseline"] <= 1
    # from --init: a row at step 0 (the init's own score), then the end of the run (probe every 60 min: not due)
    lines.clear()
    train_generator("ddpm", data, tmp_path / "tuned", steps=1, init=str(tmp_path / "gen"),
                    **{**kw, "channels": None})
    rows = read_log(tmp_path / "tuned" / TRAIN_DIR / "log.csv")
    assert [(r["step"], bool(r["probe_miou"])) for r in rows] == [("0", True), ("1", True)], rows
    assert [line.split(":")[0] for line in lines if line.startswith("probe at")] == ["probe at step 0",
                                                                                     "probe at step 1"]


def test_probe_refusals(tmp_path, capsys):
    data = _gradients(tmp_path / "imgs")
    base = ["train-generator", "--data", str(data), "--steps", "1", "--device", "cpu", "--quiet"]
    assert "--annotations" in _cli_error(capsys, [*base, "--out", str(tmp_path / "a"), "--probe-every", "5"])
    err = _cli_error(capsys, [*base, "--backend", "stylegan2", "--out", str(tmp_path / "b"), "--annotations",
                              str(tmp_path)])
    assert "--annotations" in err and "stylegan2" in err
    ws = _photo_workspace(tmp_path / "w", count=1)
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "c"), "--annotations", str(ws.root)])
    assert "at least 2 annotated" in err and str(ws.root) in err
    assert not (tmp_path / "c" / "unet").exists()

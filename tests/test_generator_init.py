"""labelgen train-generator --init: fine-tuning an existing generator (DDPM folder, ADM checkpoint, a stylegan2 run),
at its resolution and another, the run's record of it, and the one-line refusals."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import labelgen  # noqa: F401  (torchvision shim before diffusers)
from labelgen.errors import LabelgenError
from labelgen.run import load_resume, read_log
from labelgen.training.common import CHECKPOINT_NAME, TRAIN_DIR
from labelgen.training.train_generator import train_generator
from test_train_generator import _cli_error

H, W = 16, 24
TINY = {"channels": (8, 16), "batch_size": 8, "sample_every": 0, "checkpoint_every": 1000, "log_every": 1,
        "warmup": 1, "device": "cpu"}


def _images(folder: Path, n: int = 8, size: tuple[int, int] = (H, W), seed: int = 0) -> Path:
    """n smooth colour gradients of ``size`` (H, W)."""
    from labelgen.data.io import write_png

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        write_png(folder / f"{i:03d}.png", ((c0 * (xx[..., None] / (w - 1)) + c1 * (yy[..., None] / (h - 1))) / 2
                                            ).astype(np.uint8))
    return folder


def _ddpm(data: Path, out: Path, **kw):
    return train_generator("ddpm", data, out, echo=lambda s: None, show_progress=False, **{**TINY, **kw})


def _first_loss(out: Path) -> float:
    return float(read_log(out / TRAIN_DIR / "log.csv")[0]["loss"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the images, a tiny DDPM trained on them for 120 steps: its export is an init)."""
    root = tmp_path_factory.mktemp("trained")
    data = _images(root / "imgs")
    _ddpm(data, root / "gen", steps=120, lr=3e-3)
    return data, root / "gen"


@pytest.mark.parametrize("resolution", [None, (32, 48)], ids=["same-resolution", "twice-the-resolution"])
def test_init_starts_from_the_trained_weights(trained, tmp_path, resolution):
    """The first step's loss (same seed: the same batch, noise and timesteps) of a run from --init is far below a
    scratch run's, at the init's resolution and at another one (the UNet's sample_size changed, weights by name);
    the run records its init, and a resumed run must agree on it."""
    data, gen = trained
    kw = {} if resolution is None else {"resolution": resolution}
    _ddpm(data, tmp_path / "scratch", steps=1, **kw)
    summary = _ddpm(data, tmp_path / "init", steps=1, init=str(gen), **kw)
    scratch, init = _first_loss(tmp_path / "scratch"), _first_loss(tmp_path / "init")
    assert init < 0.25 * scratch, (init, scratch)
    saved = load_resume(tmp_path / "init" / TRAIN_DIR / CHECKPOINT_NAME)
    assert saved["config"]["init"] == str(gen.resolve()) and saved["config"]["channels"] == [8, 16]
    exported = json.loads((tmp_path / "init" / "unet" / "config.json").read_text())
    assert exported["sample_size"] == list(resolution or (H, W))
    assert summary["step"] == 1
    # resumed: the same init (or none given) continues; another is refused
    assert _ddpm(data, tmp_path / "init", steps=2, **kw)["step"] == 2
    with pytest.raises(LabelgenError, match="init"):
        _ddpm(data, tmp_path / "init", steps=3, init="default", **kw)


def test_init_weights_are_model_and_ema(trained, tmp_path):
    """With a learning rate of nearly 0, the run's model and EMA stay the init's weights (the export's)."""
    from safetensors.torch import load_file

    data, gen = trained
    _ddpm(data, tmp_path / "run", steps=2, init=str(gen), lr=1e-12, ema=0.5)
    start = load_file(str(gen / "unet" / "diffusion_pytorch_model.safetensors"))
    saved = load_resume(tmp_path / "run" / TRAIN_DIR / CHECKPOINT_NAME)
    for part in ("model", "ema"):
        for name, value in start.items():
            assert torch.allclose(saved[part][name], value, atol=1e-6), (part, name)
    assert saved["optimizer"]["state"][0]["step"].item() == 2  # the optimiser started afresh


def test_refusals_name_the_file_and_the_reason(trained, tmp_path, capsys):
    data, gen = trained
    base = ["train-generator", "--data", str(data), "--steps", "1", "--device", "cpu", "--quiet"]
    # 2 UNet levels downsample once: an odd side cannot be
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "a"), "--init", str(gen), "--resolution", "17x24"])
    assert str(gen) in err and "divisible by 2" in err and "17x24" in err
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "b"), "--init", str(gen), "--channels", "8,32"])
    assert "--channels" in err and "[8, 16]" in err
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "c"), "--init", str(tmp_path / "missing")])
    assert "not found" in err and "missing" in err
    # another backend's output, both ways
    sg = tmp_path / "sg"
    square = _images(tmp_path / "square", size=(16, 16))
    train_generator("stylegan2", square, sg, max_channels=16, z_dim=16, batch_size=4, steps=1, sample_every=0,
                    device="cpu", echo=lambda s: None, show_progress=False)
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "d"), "--init", str(sg)])
    assert str(sg) in err and "stylegan2" in err
    err = _cli_error(capsys, ["train-generator", "--backend", "stylegan2", "--data", str(square), "--steps", "1",
                              "--device", "cpu", "--quiet", "--out", str(tmp_path / "e"), "--init", str(gen)])
    assert CHECKPOINT_NAME in err and "ddpm" in err
    # a UNet that is not RGB -> RGB
    odd = tmp_path / "odd"
    import shutil

    shutil.copytree(gen, odd, ignore=shutil.ignore_patterns(TRAIN_DIR))
    config = json.loads((odd / "unet" / "config.json").read_text())
    (odd / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 4}))
    err = _cli_error(capsys, [*base, "--out", str(tmp_path / "f"), "--init", str(odd)])
    assert "config.json" in err and "4 to 3 channels" in err
    for name in "abcdef":
        assert not (tmp_path / name / "unet").exists()


def test_default_init_is_the_embedded_generator(tmp_path):
    """--init default: the embedded CCP DDPM (64..256 channels, 4 levels) at the data's 16x24 (divisible by 8)."""
    from labelgen.default_teacher import DEFAULT_GENERATOR_DIR

    data = _images(tmp_path / "imgs", n=2)
    summary = train_generator("ddpm", data, tmp_path / "run", init="default", steps=1, batch_size=2, sample_every=0,
                              device="cpu", echo=lambda s: None, show_progress=False)
    assert summary["params"] > 10_000_000
    config = load_resume(tmp_path / "run" / TRAIN_DIR / CHECKPOINT_NAME)["config"]
    assert config["init"] == "default" and config["channels"] == [64, 128, 256, 256]
    assert json.loads((tmp_path / "run" / "unet" / "config.json").read_text())["sample_size"] == [H, W]
    assert (DEFAULT_GENERATOR_DIR / "unet").is_dir()


# ---------------------------------------------------------------- ADM
ADM_FLAGS = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2",
             "attention_resolutions": "8", "num_heads": 1, "learn_sigma": True, "diffusion_steps": 1000}


def test_adm_checkpoint_trains_as_adm_and_exports_an_adm_generator(tmp_path, capsys):
    """A guided-diffusion .pt (flags beside it) is trained as the ADM network (eps = its first 3 channels) and
    exported as an adm generator folder; that folder is an init too, at twice the size (attention kept at the
    same downsampling), and its weights are what the second run starts from. A non-square size is refused."""
    from labelgen.generators import Generator
    from labelgen.generators.adm import ADMGenerator

    torch.manual_seed(0)
    pt = tmp_path / "tiny_adm.pt"
    torch.save(ADMGenerator(ADM_FLAGS).unet.state_dict(), pt)
    (tmp_path / "tiny_adm.json").write_text(json.dumps(ADM_FLAGS))
    data = _images(tmp_path / "imgs", size=(16, 16))
    kw = {"batch_size": 8, "sample_every": 0, "log_every": 1, "warmup": 1, "device": "cpu"}
    train_generator("ddpm", data, tmp_path / "a", init=str(pt), steps=60, lr=3e-3, echo=lambda s: None,
                    show_progress=False, **kw)
    first = [float(r["loss"]) for r in read_log(tmp_path / "a" / TRAIN_DIR / "log.csv")]
    adm = Generator.from_pretrained(tmp_path / "a")
    assert adm.backend == "adm" and adm.resolution == (16, 16) and adm.flags["learn_sigma"]
    assert adm.sample([0], ddim_steps=2).images.shape == (1, 3, 16, 16)
    big = _images(tmp_path / "big", size=(32, 32))
    train_generator("ddpm", big, tmp_path / "b", init=str(tmp_path / "a"), steps=1, echo=lambda s: None,
                    show_progress=False, **kw)
    resized = Generator.from_pretrained(tmp_path / "b")
    assert resized.resolution == (32, 32) and resized.flags["attention_resolutions"] == [16]
    assert float(read_log(tmp_path / "b" / TRAIN_DIR / "log.csv")[0]["loss"]) < 0.5 * first[0], first[0]
    err = _cli_error(capsys, ["train-generator", "--data", str(data), "--out", str(tmp_path / "c"), "--init", str(pt),
                              "--resolution", "16x32", "--device", "cpu", "--quiet"])
    assert str(pt) in err and "square" in err


# ---------------------------------------------------------------- stylegan2
SG = {"max_channels": 16, "z_dim": 16, "batch_size": 4, "sample_every": 0, "log_every": 1, "device": "cpu"}


def test_stylegan2_init_from_its_own_run(tmp_path, capsys):
    """G and G_ema start from the init run's G_ema, D from its D; its architecture is taken; another resolution is
    refused."""
    square = _images(tmp_path / "square", size=(16, 16))
    train_generator("stylegan2", square, tmp_path / "a", steps=3, echo=lambda s: None, show_progress=False, **SG)
    train_generator("stylegan2", square, tmp_path / "b", init=str(tmp_path / "a"), steps=1, lr=1e-12, ema=0.5,
                    echo=lambda s: None, show_progress=False, **{**SG, "max_channels": None, "z_dim": None})
    a = load_resume(tmp_path / "a" / TRAIN_DIR / CHECKPOINT_NAME)
    b = load_resume(tmp_path / "b" / TRAIN_DIR / CHECKPOINT_NAME)
    assert b["config"]["init"] == str((tmp_path / "a").resolve()) and b["config"]["max_channels"] == 16
    for part, source in (("G", "G_ema"), ("G_ema", "G_ema"), ("D", "D")):
        for name, value in a[source].items():
            if value.is_floating_point() and "w_avg" not in name:  # w_avg: a running mean, updated by every step
                assert torch.allclose(b[part][name], value, atol=1e-6), (part, name)
    err = _cli_error(capsys, ["train-generator", "--backend", "stylegan2", "--data", str(square), "--resolution",
                              "32x32", "--out", str(tmp_path / "c"), "--init", str(tmp_path / "a"), "--device", "cpu",
                              "--quiet"])
    assert CHECKPOINT_NAME in err and "16x16" in err and "32x32" in err

"""labelgen train-generator: DDPM (and StyleGAN2) training on tiny images, resume, export, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import labelgen  # noqa: F401  (torchvision shim before diffusers)
from labelgen.cli import main
from labelgen.data.io import write_png
from labelgen.run import load_resume as load_checkpoint
from labelgen.run import read_log
from labelgen.training.common import CHECKPOINT_NAME, TRAIN_DIR
from labelgen.training.train_generator import train_generator

H, W = 16, 24
TINY = {"channels": (8, 16), "batch_size": 8, "sample_every": 0, "checkpoint_every": 1000, "log_every": 1,
        "warmup": 1, "device": "cpu"}


def _images(folder: Path, n: int = 8, seed: int = 0, same: bool = False) -> Path:
    """n RGB images H x W: smooth colour gradients (all the same one with ``same``)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(n):
        if i == 0 or not same:
            c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            image = (c0 * (xx[..., None] / (W - 1)) + c1 * (yy[..., None] / (H - 1))) / 2
        write_png(folder / f"{i:03d}.png", image.astype(np.uint8))
    return folder


def _train(data: Path, out: Path, **kw):
    return train_generator("ddpm", data, out, echo=lambda s: None, show_progress=False, **{**TINY, **kw})


def _losses(out: Path) -> list[float]:
    return [float(row["loss"]) for row in read_log(out / TRAIN_DIR / "log.csv")]


def test_ddpm_loss_finite_and_falls(tmp_path):
    data = _images(tmp_path / "imgs", n=8, same=True)
    out = tmp_path / "run"
    # log_every=1 logs the running mean of the last <=100 losses; compare raw per-step losses instead
    summary = _train(data, out, steps=60, lr=3e-3)
    assert summary["step"] == 60 and summary["stopped"] is None
    means = _losses(out)
    assert len(means) == 60 and all(np.isfinite(means))
    # recover per-step losses from running means (window 100 > 60 steps: plain cumulative means)
    raw = [means[0]] + [means[i] * (i + 1) - means[i - 1] * i for i in range(1, len(means))]
    first, last = np.mean(raw[:10]), np.mean(raw[-10:])
    assert last < 0.6 * first, (first, last)


def test_ddpm_resume_is_exact(tmp_path):
    data = _images(tmp_path / "imgs")
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(data, straight, steps=6, lr=1e-3)
    s1 = _train(data, split, steps=3, lr=1e-3)
    assert s1["step"] == 3
    assert load_checkpoint(split / TRAIN_DIR / CHECKPOINT_NAME)["step"] == 3
    s2 = _train(data, split, steps=6, lr=1e-3)
    assert s2["step"] == 6
    a = load_checkpoint(straight / TRAIN_DIR / CHECKPOINT_NAME)
    b = load_checkpoint(split / TRAIN_DIR / CHECKPOINT_NAME)
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert torch.equal(a["rng"][0]["gen"], b["rng"][0]["gen"])
    assert [r for r in _losses(split)] and len(_losses(split)) == 6  # steps 1-3, then 4-6 appended


def test_ddpm_resume_after_sigkill(tmp_path):
    """A CLI run killed with SIGKILL resumes from its last checkpoint and continues from that step."""
    data = _images(tmp_path / "imgs")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "labelgen.cli", "train-generator", "--data", str(data), "--out", str(out),
           "--channels", "8,16", "--batch-size", "4", "--steps", "100000", "--checkpoint-every", "2",
           "--sample-every", "0", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / TRAIN_DIR / CHECKPOINT_NAME
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.is_file() and load_checkpoint(ckpt)["step"] >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    saved = load_checkpoint(ckpt)
    k = saved["step"]
    assert k >= 4 and k % 2 == 0
    summary = train_generator("ddpm", data, out, steps=k + 2, batch_size=4, sample_every=0, echo=lambda s: None,
                              show_progress=False, device="cpu")
    assert summary["step"] == k + 2
    resumed = load_checkpoint(ckpt)
    assert resumed["step"] == k + 2 and resumed["config"]["channels"] == [8, 16]
    assert any(not torch.equal(resumed["model"][n], saved["model"][n]) for n in saved["model"])
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_sigterm_stops_gracefully_with_checkpoint(tmp_path):
    data = _images(tmp_path / "imgs")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "labelgen.cli", "train-generator", "--data", str(data), "--out", str(out),
           "--channels", "8,16", "--batch-size", "2", "--steps", "100000", "--checkpoint-every", "100000",
           "--sample-every", "0", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / TRAIN_DIR).is_dir():  # first log line (step 50): the signal handler is installed
            break
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "received SIGTERM" in stdout and "checkpoint saved" in stdout
    step = load_checkpoint(out / TRAIN_DIR / CHECKPOINT_NAME)["step"]
    assert step >= 1 and f"stopped at step {step}/" in stdout
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_time_limit_stops_with_checkpoint_and_loadable_export(tmp_path):
    data = _images(tmp_path / "imgs")
    out = tmp_path / "run"
    summary = _train(data, out, steps=1000, time_limit_min=1e-6, sample_every=1)
    assert summary["stopped"] and "time limit" in summary["stopped"]
    assert summary["step"] == 1
    assert load_checkpoint(out / TRAIN_DIR / CHECKPOINT_NAME)["step"] == 1
    assert (out / TRAIN_DIR / "samples" / "step_0000001.png").is_file()
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"


def test_output_loads_in_ddpm_backend_and_diffusers(tmp_path):
    from diffusers import DDPMPipeline

    from labelgen.generators import Generator, from_checkpoint

    data = _images(tmp_path / "imgs")
    out = tmp_path / "run"
    _train(data, out, steps=3, ema=0.9)
    pipe = DDPMPipeline.from_pretrained(str(out))
    assert tuple(pipe.unet.config.sample_size) == (H, W)
    ckpt = load_checkpoint(out / TRAIN_DIR / CHECKPOINT_NAME)
    for k, v in pipe.unet.state_dict().items():  # the export holds the EMA weights
        assert torch.equal(v, ckpt["ema"][k]), k
    for gen in (from_checkpoint("ddpm", out), Generator.from_pretrained(out)):
        assert gen.resolution == (H, W)
        images = torch.rand(2, 3, H, W) * 2 - 1
        feats = gen.features_of_images(images)
        assert len(feats) == len(gen.feature_channels)
        assert [f.shape[1] for f in feats] == gen.feature_channels
        assert all(torch.isfinite(f).all() for f in feats)
        sample = gen.sample([0], ddim_steps=2)
        assert sample.images.shape == (1, 3, H, W)


def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_inputs_one_line_error_exit_2(tmp_path, capsys):
    out = str(tmp_path / "out")
    err = _cli_error(capsys, ["train-generator", "--data", str(tmp_path / "missing"), "--out", out])
    assert "not found" in err
    (tmp_path / "empty").mkdir()
    err = _cli_error(capsys, ["train-generator", "--data", str(tmp_path / "empty"), "--out", out])
    assert "no images" in err
    data = _images(tmp_path / "imgs", n=2)
    # 5 UNet levels downsample 4 times: 16x24 is not a multiple of 16
    err = _cli_error(capsys, ["train-generator", "--data", str(data), "--out", out, "--channels", "8,8,8,8,8"])
    assert "divisible by 16" in err
    write_png(data / "odd.png", np.zeros((10, 10, 3), np.uint8))
    err = _cli_error(capsys, ["train-generator", "--data", str(data), "--out", out])
    assert "differs" in err and "--resolution" in err
    assert not (tmp_path / "out" / "unet").exists()


# ---------------------------------------------------------------- stylegan2
SG = {"max_channels": 16, "z_dim": 16, "batch_size": 8, "sample_every": 0, "checkpoint_every": 1000,
      "log_every": 1, "device": "cpu"}


def _train_sg(data: Path, out: Path, **kw):
    return train_generator("stylegan2", data, out, echo=lambda s: None, show_progress=False, **{**SG, **kw})


def _red(folder: Path) -> tuple[Path, torch.Tensor]:
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0], image[..., 1:] = 220, 40
    for i in range(8):
        write_png(folder / f"{i}.png", image)
    return folder, torch.tensor([220.0, 40.0, 40.0]) / 127.5 - 1


def test_stylegan2_learns_colour_and_loads_in_backend(tmp_path):
    from labelgen.generators import Generator

    data, target = _red(tmp_path / "red")
    out = tmp_path / "sg"
    _train_sg(data, out, steps=1)
    err0 = (Generator.from_pretrained(out).sample(list(range(8))).images.mean([0, 2, 3]) - target).abs().mean()
    summary = _train_sg(data, out, steps=30)
    assert summary["step"] == 30 and np.isfinite(summary["loss_d"]) and np.isfinite(summary["loss_g"])
    gen = Generator.from_pretrained(out)  # G_ema.save_pretrained folder
    assert gen.backend == "stylegan2" and gen.resolution == (16, 16)
    output = gen.sample([0, 1])
    assert [f.shape[1] for f in output.features] == gen.feature_channels
    err1 = (gen.sample(list(range(8))).images.mean([0, 2, 3]) - target).abs().mean()
    assert err1 < 0.5 * err0, (err0, err1)


def test_stylegan2_resume_is_exact(tmp_path):
    data, _ = _red(tmp_path / "red")
    a, b = tmp_path / "a", tmp_path / "b"
    _train_sg(data, a, steps=4, r1_every=2)
    _train_sg(data, b, steps=2, r1_every=2)
    _train_sg(data, b, steps=4, r1_every=2)
    ca = load_checkpoint(a / TRAIN_DIR / CHECKPOINT_NAME)
    cb = load_checkpoint(b / TRAIN_DIR / CHECKPOINT_NAME)
    assert ca["step"] == cb["step"] == 4
    for part in ("G", "D", "G_ema"):
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), (part, k)


def test_stylegan2_needs_square_power_of_two(tmp_path, capsys):
    data = _images(tmp_path / "imgs", n=2)  # 16x24
    err = _cli_error(capsys, ["train-generator", "--backend", "stylegan2", "--data", str(data),
                              "--out", str(tmp_path / "o")])
    assert "square" in err and "--resolution" in err
    err = _cli_error(capsys, ["train-generator", "--backend", "stylegan2", "--data", str(data),
                              "--out", str(tmp_path / "o"), "--beta-schedule", "cosine"])
    assert "--beta-schedule" in err


def test_diff_augment_is_differentiable_and_translates():
    from labelgen.training.stylegan2_trainer import diff_augment

    x = torch.ones(64, 3, 16, 16, requires_grad=True)
    y = diff_augment(x * 1.0, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # a constant image keeps its value under saturation/contrast; cutout zeros >= 4x4 pixels of each
    assert ((y == 0).all(1).flatten(1).sum(1) >= 16).all()
    assert len(set(y.amax([1, 2, 3]).tolist())) > 32  # per-sample brightness
    # translation only (colour on a zero image adds a constant; cutout zeros a block): a bright dot moves
    dot = torch.zeros(64, 3, 16, 16)
    dot[:, :, 8, 8] = 10.0
    moved = diff_augment(dot, torch.Generator().manual_seed(1))
    peaks = moved.flatten(2).argmax(2)[:, 0]
    assert len(set(peaks.tolist())) > 4


def test_finished_run_reexports_fp16_that_loads_as_float32(tmp_path):
    from safetensors import safe_open

    from labelgen.generators import Generator

    data = _images(tmp_path / "imgs")
    out = tmp_path / "run"
    _train(data, out, steps=2, ema=0.5)
    fp32 = Generator.from_pretrained(out).features_of_images(torch.zeros(1, 3, H, W))
    weights = out / "unet" / "diffusion_pytorch_model.safetensors"
    size32 = weights.stat().st_size
    summary = _train(data, out, steps=2, export_fp16=True)  # already at --steps: re-export only
    assert summary["step"] == 2
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert weights.stat().st_size < 0.6 * size32
    gen = Generator.from_pretrained(out)
    assert next(gen.parameters()).dtype == torch.float32
    fp16 = gen.features_of_images(torch.zeros(1, 3, H, W))
    for a, b in zip(fp32, fp16):
        assert torch.allclose(a, b, atol=2e-2, rtol=2e-2)


def test_resume_keeps_the_runs_own_settings_unless_given(tmp_path):
    data = _images(tmp_path / "imgs")
    out = tmp_path / "run"
    train_generator("ddpm", data, out, channels=(8, 16), steps=2, batch_size=4, lr=1e-3, ema=0.9,
                    sample_every=0, device="cpu", echo=lambda s: None, show_progress=False)
    # only --data/--out (+ a new total): the rest continues as the run was started
    summary = train_generator("ddpm", data, out, steps=3, echo=lambda s: None, show_progress=False)
    assert summary["step"] == 3
    config = load_checkpoint(out / TRAIN_DIR / CHECKPOINT_NAME)["config"]
    assert (config["batch_size"], config["lr"], config["ema"], config["sample_every"]) == (4, 1e-3, 0.9, 0)
    assert config["steps"] == 3
    # "the same command" without --steps: the planned total is kept (nothing left to do)
    summary = train_generator("ddpm", data, out, lr=5e-4, echo=lambda s: None, show_progress=False)
    assert summary["step"] == 3


def test_cli_refuses_a_crafted_checkpoint(tmp_path, plant_payload, capsys):
    """A GEN/train/checkpoint.pt that needs unpickling is refused with one line; its payload never runs."""
    data = _images(tmp_path / "imgs")
    marker = tmp_path / "marker"
    plant_payload(tmp_path / "gen" / TRAIN_DIR / CHECKPOINT_NAME, marker)
    code = 0
    try:
        main(["train-generator", "--data", str(data), "--out", str(tmp_path / "gen"), "--channels", "8,16",
              "--steps", "1", "--device", "cpu", "--quiet"])
    except SystemExit as e:
        code = e.code or 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and CHECKPOINT_NAME in lines[0], err
    assert not marker.exists()


# ---------------------------------------------------------------- GPU speed-ups leave the CPU path unchanged
def _reference_run(data: Path, steps: int, lr: float) -> tuple[dict, list[float]]:
    """The DDPM objective written out step by step (the loop train_ddpm ran before compile / deferred loss
    reads): same RNG order (batch indices, flips, noise, timesteps), AdamW (the fused kernel, as the training
    engine's rule gives on every device), clip, warm-up."""
    import torch.nn.functional as F

    from labelgen.training.common import augment_batch, load_images
    from labelgen.training.train_generator import DDPM_ARCH_DEFAULTS, build_scheduler, build_unet

    images = load_images(data)
    run = {**DDPM_ARCH_DEFAULTS, "channels": TINY["channels"], "resolution": (H, W)}
    torch.manual_seed(0)
    unet, scheduler = build_unet(run), build_scheduler(run)
    gen = torch.Generator("cpu").manual_seed(0)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0, fused=True)
    batch, losses = TINY["batch_size"], []
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x0 = augment_batch(images, idx, gen)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, run["num_train_timesteps"], (batch,), generator=gen)
        a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / TINY["warmup"])
        opt.step()
        losses.append(loss.item())
    return unet.state_dict(), losses


def _model(out: Path) -> dict:
    return load_checkpoint(out / TRAIN_DIR / CHECKPOINT_NAME)["model"]


def test_cpu_training_matches_the_plain_loop(tmp_path):
    """compile "auto" is off on CPU, losses read every step: bit-identical to the plain loop."""
    data = _images(tmp_path / "imgs")
    summary = _train(data, tmp_path / "run", steps=5, lr=1e-3)
    weights, losses = _reference_run(data, 5, 1e-3)
    saved = _model(tmp_path / "run")
    for k, v in weights.items():
        assert torch.equal(saved[k], v), k
    assert summary["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert load_checkpoint(tmp_path / "run" / TRAIN_DIR / CHECKPOINT_NAME)["optimizer"]["param_groups"][0]["fused"] is True


def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch):
    data = _images(tmp_path / "imgs")
    _train(data, tmp_path / "eager", steps=3, lr=1e-3, compile="off")
    calls = []

    class Broken:  # what a failing torch.compile hands back: the error comes at the first call
        def __init__(self, model):
            calls.append(model)

        def __call__(self, *args, **kwargs):
            raise RuntimeError("inductor: no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken(model))
    expected = r"torch.compile failed \(RuntimeError: inductor: no C\+\+ compiler found\); training the UNet eagerly"
    with pytest.warns(RuntimeWarning, match=expected) as seen:
        _train(data, tmp_path / "fallback", steps=3, lr=1e-3, compile="on")
    assert len(calls) == 1 and len([w for w in seen if "torch.compile" in str(w.message)]) == 1
    eager, fallback = _model(tmp_path / "eager"), _model(tmp_path / "fallback")
    assert all(torch.equal(eager[k], fallback[k]) for k in eager)


def test_compiled_step_is_used_when_it_works(tmp_path, monkeypatch):
    data = _images(tmp_path / "imgs")
    _train(data, tmp_path / "eager", steps=3, lr=1e-3, compile="off")
    used = []

    def fake_compile(model, **kw):  # a "compiler" that runs the same module (and shares its parameters)
        assert kw.get("dynamic") is False
        return lambda *a, **k: used.append(1) or model(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    _train(data, tmp_path / "compiled", steps=3, lr=1e-3, compile="on")
    assert len(used) == 3
    eager, compiled = _model(tmp_path / "eager"), _model(tmp_path / "compiled")
    assert all(torch.equal(eager[k], compiled[k]) for k in eager)
    # "auto" does not compile on CPU; a bad value is one clear error
    used.clear()
    _train(data, tmp_path / "auto", steps=2, lr=1e-3, compile="auto")
    assert used == []
    proc = subprocess.run([sys.executable, "-m", "labelgen.cli", "train-generator", "--data", str(data), "--out",
                           str(tmp_path / "bad"), "--compile", "sometimes"], capture_output=True, text=True)
    assert proc.returncode == 2 and "sometimes" in proc.stderr


# ---------------------------------------------------------------- torchrun: K processes share every batch
TORCHRUN = {"ddpm": ["--channels", "8,16", "--batch-size", "8", "--warmup", "1", "--lr", "1e-3"],
            "stylegan2": ["--channels", "16", "--z-dim", "16", "--batch-size", "8"]}


def _torchrun_train(backend: str, data: Path, out: Path, steps: int) -> str:
    """``torchrun --standalone --nproc-per-node 2 -m labelgen.cli -- train-generator ...`` (gloo on the CPU);
    its standard output."""
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2", "-m",
           "labelgen.cli", "--", "train-generator", "--backend", backend, "--data", str(data), "--out", str(out),
           "--steps", str(steps), "--sample-every", "2", "--checkpoint-every", "1000", "--log-every", "1",
           "--device", "cpu", "--quiet", *TORCHRUN[backend]]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("backend", ["ddpm", "stylegan2"])
def test_two_torchrun_processes_follow_one_process(tmp_path, backend):
    """Two gloo processes, each computing half of every batch of 8 (the same indices, flips, noise, latents and
    augmentation, drawn per global batch and split by rank; gradients averaged), stopped after 2 steps and
    resumed to 4: the loss curve and weights of one process doing the same, within float rounding;
    rank 0 alone writes the log, checkpoint, grids and messages."""
    if backend == "ddpm":
        data, one = _images(tmp_path / "imgs"), lambda *a, **k: _train(*a, lr=1e-3, **k)
    else:
        rng = np.random.default_rng(1)
        data, one = tmp_path / "square", _train_sg
        for i in range(8):  # distinct 16x16 images: which rows a rank gets matters
            write_png(data / f"{i}.png", (rng.random((1, 1, 3)) * 255 * np.linspace(0.3, 1, 16)[:, None, None]
                                          * np.ones((16, 16, 3))).astype(np.uint8))
    one(data, tmp_path / "one", steps=2)  # resumed at the same step: the log's running means start again there
    one(data, tmp_path / "one", steps=4)
    first = _torchrun_train(backend, data, tmp_path / "two", steps=2)
    resumed = _torchrun_train(backend, data, tmp_path / "two", steps=4)
    assert "2 torchrun processes" in first and resumed.count("resuming") == 1, resumed
    log_one = read_log(tmp_path / "one" / TRAIN_DIR / "log.csv")
    log_two = read_log(tmp_path / "two" / TRAIN_DIR / "log.csv")
    assert [r["step"] for r in log_two] == ["1", "2", "3", "4"]
    columns = ["loss"] if backend == "ddpm" else ["loss_d", "loss_g"]
    for column in columns:
        curve_one, curve_two = [float(r[column]) for r in log_one], [float(r[column]) for r in log_two]
        assert curve_two == pytest.approx(curve_one, rel=1e-4, abs=1e-5), column
    a = load_checkpoint(tmp_path / "one" / TRAIN_DIR / CHECKPOINT_NAME)
    b = load_checkpoint(tmp_path / "two" / TRAIN_DIR / CHECKPOINT_NAME)
    assert a["step"] == b["step"] == 4
    # Adam turns a rounding-sized difference of a near-zero gradient into up to one step (lr) of that weight;
    # all but a few weights agree to rounding
    lr = 1e-3 if backend == "ddpm" else 2e-3
    for part in (("model", "ema") if backend == "ddpm" else ("G", "D", "G_ema")):
        diff = torch.cat([(a[part][k].float() - b[part][k].float()).abs().flatten() for k in a[part]])
        assert diff.max() < lr and diff.mean() < 1e-5, (part, diff.max(), diff.mean())
    assert sorted(p.name for p in (tmp_path / "two" / TRAIN_DIR / "samples").iterdir()) == \
        ["step_0000002.png", "step_0000004.png"]

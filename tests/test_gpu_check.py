"""bench/gpu_check.py --tiny: every step of the GPU check runs on CPU with tiny sizes (made-up CCP-like data)
and leaves one JSON with each step's status, seconds and numbers; the packed generator reloads bit for bit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import labelgen  # noqa: F401  (torchvision shim before diffusers)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "gpu_check.json").read_text()), proc


def test_every_step_ran_with_its_seconds_and_numbers(tiny_run):
    out, record, proc = tiny_run
    steps = record["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    for name, entry in steps.items():
        assert entry["status"] == "ok", (name, entry)
        assert _number(entry["seconds"]) and 0 < entry["seconds"] <= entry["limit_s"] + 1, (name, entry)
    assert record["tiny"] and record["device"].startswith("CPU") and _number(record["total_seconds"])
    gen = steps["train_generator"]
    assert gen["steps"] > 0 and gen["steps_per_s"] > 0 and gen["params"] > 0 and not gen["compiled"]  # CPU: eager
    assert 0 <= steps["teacher_test"]["miou"] <= 1 and steps["teacher_test"]["images"] == gpu_check.TINY_SPLITS["test"]
    for rates in (steps["ddpm_rates"]["ddim50"], steps["ddpm_rates"]["ddim20"], steps["gan_rates"]["dcgan"],
                  steps["gan_rates"]["stylegan2_random"]):
        assert rates["bare_per_s"] > 0 and rates["synthesis_per_s"] > 0
        assert rates["time_ratio"] == pytest.approx(rates["bare_per_s"] / rates["synthesis_per_s"], rel=0.01)
    assert steps["gan_rates"]["stylegan2_random"]["resolution"] == [32, 32]
    assert steps["synthesis"]["synthetic"]["n"] == gpu_check.TINY.synthetic_n
    assert steps["synthesis"]["pseudo_labels"]["n"] == gpu_check.TINY_SPLITS["unlabeled"]
    student = steps["student"]
    assert 0 <= student["test_miou"] <= 1 and student["train_images_per_s"] > 0
    loader = steps["student_loader"]
    assert loader["images_per_s"] > 0 and loader["loader_over_train"] == pytest.approx(
        loader["images_per_s"] / student["train_images_per_s"], rel=0.01)
    assert (out / "logs" / "train_generator.log").read_text().startswith("$ ")
    assert "steps ok" in proc.stdout


def test_packed_generator_files_are_small_and_reload_to_the_same_unet(tiny_run, tmp_path):
    from diffusers import UNet2DModel

    from labelgen.generators import from_checkpoint

    out, record, _ = tiny_run
    packed = out / "packed"
    limit = record["steps"]["pack"]["max_bytes"]
    weights = sorted((packed / "unet").glob("*.safetensors"))
    assert len(weights) >= 2  # the tiny limit forces a split
    assert all(p.stat().st_size <= limit for p in packed.rglob("*") if p.is_file())
    trained = UNet2DModel.from_pretrained(str(out / "generator" / "unet")).state_dict()
    for folder in (packed, gpu_check.join_packed(packed, tmp_path / "joined")):
        reloaded = UNet2DModel.from_pretrained(str(folder / "unet")).state_dict()
        assert reloaded.keys() == trained.keys() and all(torch.equal(reloaded[k], trained[k]) for k in trained)
        generator = from_checkpoint("ddpm", folder)  # labelgen loads the packed (and the joined) folder
        assert generator.unet.dtype == torch.float32
    assert len(list((tmp_path / "joined" / "unet").glob("*.safetensors"))) == 1


def test_a_step_past_its_limit_is_stopped_and_its_dependents_skipped(tmp_path):
    sizes = gpu_check.TINY.__class__(**{**gpu_check.TINY.__dict__, "limits": {**gpu_check.TINY.limits, "heads": 3}})
    check = gpu_check.Check(tmp_path, tmp_path / "ccp", sizes, 0.05, True, "test")
    check.record["steps"]["train_generator"] = {"status": "ok"}
    started = time.perf_counter()
    check.step("heads", lambda limit: time.sleep(30))
    assert time.perf_counter() - started < 10
    check.step("teacher_test", lambda limit: {"miou": 1.0})
    check.step("pack", lambda limit: 1 / 0)
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["heads"]["status"] == "timeout" and steps["heads"]["limit_s"] == 3
    assert steps["teacher_test"]["status"] == "skipped" and "heads" in steps["teacher_test"]["reason"]
    assert steps["pack"]["status"] == "failed" and "ZeroDivisionError" in steps["pack"]["error"]


def test_without_a_gpu_the_full_check_refuses_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--ccp", str(tmp_path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no CUDA device")

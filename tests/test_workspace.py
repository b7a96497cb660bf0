"""Workspace commands: init (refuses a bad checkpoint, records resolution), sample, import, the
annotation store, the feature cache, CLI errors (one line, exit 2)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from labelgen.cli import main
from labelgen.workspace import Workspace, create_workspace
from teacher_fakes import CLASSES, REPO, annotated_workspace, evil_workspace, layout, render, subprocess_env

torch.set_num_threads(1)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """The CLI in this process (exit status from SystemExit, output captured); subprocess=True runs
    ``python -m labelgen.cli`` instead (the real exit status of the console program)."""
    monkeypatch.setenv("LABELGEN_WORKSPACE", "")

    def run(*args, check_rc=None, subprocess_=False):
        argv = [str(a) for a in args]
        if subprocess_:
            proc = subprocess.run([sys.executable, "-m", "labelgen.cli", *argv], capture_output=True, text=True,
                                  env=subprocess_env(), cwd=REPO, timeout=120)
            result = Result(proc.returncode, proc.stdout, proc.stderr)
        else:
            capsys.readouterr()
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = int(e.code or 0)
            out = capsys.readouterr()
            result = Result(code, out.out, out.err)
        if check_rc is not None:
            assert result.returncode == check_rc, result.stderr
        return result

    return run


def test_init_sample_and_annotation_store(tmp_path, run_cli):
    root = tmp_path / "w"
    proc = run_cli("init", root, "--generator", "teacher_fakes:FakeGAN", "--classes", CLASSES, "--head", "conv",
                   check_rc=0)
    assert "32x32" in proc.stdout
    run_cli("sample", "-w", root, "--n", "3", "--seed", "5", check_rc=0)
    ws = Workspace(root)
    assert ws.resolution == (32, 32) and ws.config.feature_channels == [8, 8, 4]
    assert ws.config.head == {"type": "conv", "ensemble": 1}
    ids = ws.annotation_ids()
    assert len(ids) == 3 and ws.annotated_ids() == []
    image, recipe, mask = ws.read_annotation(ids[0])
    assert recipe["seed"] == 5 and recipe["source"] == "generated" and mask is None
    np.testing.assert_array_equal(image, render(5))
    # a colour mask dropped in from a paint program is read as class indices
    colours = np.array(ws.classes.colours, dtype=np.uint8)
    Image.fromarray(colours[layout(5)]).save(ws.mask_path(ids[0]))
    np.testing.assert_array_equal(ws.read_mask(ids[0]), layout(5))
    assert ws.annotated_ids() == [ids[0]]
    # the next sample continues after the largest seed
    assert ws.read_annotation(ws.sample_annotations(1)[0])[1]["seed"] == 8


def test_init_refuses_bad_checkpoint_and_creates_nothing(tmp_path, run_cli):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for backend in ("teacher_fakes:FakeGAN", "dcgan"):
        proc = run_cli("init", tmp_path / "w", "--generator", backend, "--checkpoint", bad, "--classes", "a,b",
                       subprocess_=backend == "dcgan")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
        assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("args,message", [
    (["sample", "--n", "2"], "not a labelgen workspace"),
    (["init", "{w}", "--generator", "nope", "--classes", "a,b"], "--generator: unknown generator backend 'nope'"),
    (["init", "{w}", "--generator", "evilplug:Gen", "--classes", "a,b"], "plug-in 'evilplug:Gen' is not enabled"),
    (["init", "{w}", "--generator", "teacher_fakes:FakeGAN", "--classes", "a"], "at least 2"),
    (["init", "{w}", "--generator", "teacher_fakes:FakeGAN", "--classes", "a,b", "--feature-layers", "0,7"],
     "feature layer 7 (--feature-layers) out of range (the generator has 3 levels: 0..2)"),
])
def test_cli_bad_input_one_line_error(tmp_path, run_cli, args, message):
    args = [a.replace("{w}", str(tmp_path / "w")) for a in args]
    if args[0] == "sample":
        args += ["-w", str(tmp_path / "missing")]
    proc = run_cli(*args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_workspace_naming_a_module_beside_it_runs_no_code(tmp_path, run_cli, monkeypatch):
    """workspace.json says "evilplug:Gen" and evilplug.py lies next to it: `python -m labelgen.cli` run in
    that folder (which puts it on sys.path) and `init` with it importable both refuse it in one line."""
    marker = tmp_path / "marker"
    ws = evil_workspace(tmp_path / "w", marker)
    proc = subprocess.run([sys.executable, "-m", "labelgen.cli", "train-heads", "-w", str(ws.root), "--epochs", "1"],
                          capture_output=True, text=True, env=subprocess_env(), cwd=ws.root, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: generator plug-in 'evilplug:Gen' is not enabled") and \
        "LABELGEN_PLUGINS=evilplug" in proc.stderr
    monkeypatch.syspath_prepend(str(ws.root))
    result = run_cli("init", tmp_path / "w2", "--generator", "evilplug:Gen", "--classes", "a,b", check_rc=2)
    assert result.stderr.count("\n") == 1 and "'evilplug:Gen' is not enabled" in result.stderr
    assert not marker.exists() and not (tmp_path / "w2").exists()


def test_import_real_images_resized_for_diffusion_refused_for_gan(tmp_path, run_cli):
    images, masks = tmp_path / "real", tmp_path / "real_masks"
    images.mkdir(), masks.mkdir()
    for seed in (40, 41):
        Image.fromarray(render(seed, 64)).save(images / f"photo{seed}.png")
        Image.fromarray(layout(seed, 64)).save(masks / f"photo{seed}.png")
    create_workspace(tmp_path / "gan", "teacher_fakes:FakeGAN", CLASSES.split(","))
    proc = run_cli("import", "-w", tmp_path / "gan", "--images", images, "--masks", masks)
    assert proc.returncode == 2 and "needs an inversion method" in proc.stderr
    create_workspace(tmp_path / "diff", "teacher_fakes:FakeDiffusion", CLASSES.split(","))
    proc = run_cli("import", "-w", tmp_path / "diff", "--images", images, "--masks", masks, check_rc=0)
    assert "resized 2" in proc.stdout and "masks: nearest" in proc.stdout
    ws = Workspace(tmp_path / "diff")
    assert ws.annotated_ids() == ["r000001", "r000002"]
    image, recipe, mask = ws.read_annotation("r000001")
    assert image.shape == (32, 32, 3) and recipe == {"source": "real", "file": "photo40.png",
                                                     "sha256": hashlib.sha256((images / "photo40.png").read_bytes()).hexdigest()}
    assert set(np.unique(mask)) <= {0, 1, 2}  # nearest: no invented class ids
    assert (mask == layout(40, 64)[::2, ::2]).mean() > 0.9
    features = ws.annotation_features("r000001")  # diffusion: features of the stored PNG
    assert [tuple(f.shape) for f in features] == [(1, 8, 8, 8), (1, 8, 16, 16), (1, 4, 32, 32)]


def test_feature_cache_reused_and_invalidated(tmp_path, monkeypatch):
    ws = annotated_workspace(tmp_path / "w", count=1)
    from labelgen.teacher import Teacher

    calls = []
    original = Teacher.features
    monkeypatch.setattr(Teacher, "features", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    first = ws.annotation_features("g000001")
    second = ws.annotation_features("g000001")
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, second))
    ws.config.feature_layers = [0, 2]  # another selection: recomputed
    assert [f.shape[1] for f in ws.annotation_features("g000001")] == [8, 4] and len(calls) == 2


def test_cli_synthesize_and_train_refuse_unready_workspace(tmp_path, run_cli):
    create_workspace(tmp_path / "w", "teacher_fakes:FakeGAN", CLASSES.split(","))
    for args, message in [(["synthesize", "--n", "2", "--out", tmp_path / "o"], "no trained head"),
                          (["synthesize", "--out", tmp_path / "o"], "--n is required"),
                          (["train-heads"], "no annotated images")]:
        result = run_cli(*args, "-w", tmp_path / "w")
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr

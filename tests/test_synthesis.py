"""Synthesis: shards round trip (ShardReader and webdataset), drop-uncertain, --from-images, resume
after SIGKILL and a 2-process torchrun split giving exactly the single-process samples."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelgen.data.shards import ShardReader
from labelgen.errors import LabelgenError
from labelgen.heads import create_head
from labelgen.heads.train import TrainConfig
from labelgen.metrics import ConfusionMatrix
from labelgen.synthesis import SynthesisConfig, plan_shards, synthesize
from teacher_fakes import (
    REPO, annotated_workspace, kill_when_written, layout, render, subprocess_env, train_workspace_heads,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A FakeDiffusion workspace with a trained 3-member pixel-MLP ensemble."""
    ws = annotated_workspace(tmp_path_factory.mktemp("synth") / "w", backend="FakeDiffusion")
    train_workspace_heads(ws, TrainConfig(epochs=6, pixels_per_image=512), progress=False)
    return ws


def contents(out: Path) -> dict[str, tuple]:
    """key -> (image bytes, mask bytes, meta, extras, soft labels bytes) of a finished shard set."""
    return {s.key: (s.image.tobytes(), s.mask.tobytes(), s.meta, dict(s.extras), None if s.soft is None else s.soft.tobytes())
            for s in ShardReader(out)}


def test_plan_is_deterministic_and_over_generates():
    plan = plan_shards(SynthesisConfig(n=10, shard_size=4, drop_uncertain=0.2))
    assert [p.keep for p in plan] == [4, 4, 2]
    assert [p.candidates for p in plan] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12]]  # ceil(4/0.8) = 5
    images = plan_shards(SynthesisConfig(n=None, shard_size=3, drop_uncertain=0.25), num_images=9)
    assert [(p.candidates, p.keep) for p in images] == [([0, 1, 2, 3], 3), ([4, 5, 6, 7], 3), ([8], 1)]
    with pytest.raises(LabelgenError):
        plan_shards(SynthesisConfig(n=4, drop_uncertain=1.0))


def test_synthesize_round_trip_soft_labels_and_webdataset(trained, tmp_path):
    out = tmp_path / "out"
    summary = synthesize(trained.teacher(), SynthesisConfig(n=7, shard_size=3, batch_size=2, soft_labels="uint8"), out,
                         progress=False)
    assert (summary.kept, summary.dropped, summary.shards) == (7, 0, 3)
    samples = list(ShardReader(out))
    assert [s.key for s in samples] == [f"{j:09d}" for j in range(7)]
    matrix = ConfusionMatrix(3)
    for s in samples:
        assert s.image.shape == (32, 32, 3) and s.mask.shape == (32, 32)
        assert s.meta["seed"] == 1_000_000 + int(s.key) and s.meta["uncertainty_measure"] == "js-divergence"
        assert s.meta["head"] == summary.manifest["config"]["head"] and s.meta["uncertainty"] >= 0
        np.testing.assert_array_equal(s.image, render(s.meta["seed"]))
        matrix.update(s.mask, layout(s.meta["seed"]))
        probs = s.soft  # decoded by the codec from <key>.soft.npz "probs"
        assert probs.shape == (3, 32, 32) and probs.dtype == np.uint8 and s.extras == {}
        assert (probs.argmax(0) == s.mask).mean() > 0.99  # ties of quantised probabilities aside
    assert matrix.compute().miou > 0.8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 7 and manifest["config"]["kept"] == 7
    wds = pytest.importorskip("webdataset")  # not a dependency: the layout stays readable by it
    dataset = wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)
    keys = [(d["__key__"], sorted(k for k in d if not k.startswith("__"))) for d in dataset]
    assert keys == [(f"{j:09d}", ["json", "mask.png", "png", "soft.npz"]) for j in range(7)]


def test_drop_uncertain_removes_the_most_uncertain(trained, tmp_path):
    every = synthesize(trained.teacher(), SynthesisConfig(n=12, shard_size=12), tmp_path / "all", progress=False)
    assert every.dropped == 0
    scores = {s.key: s.meta["uncertainty"] for s in ShardReader(tmp_path / "all")}
    kept = synthesize(trained.teacher(), SynthesisConfig(n=6, shard_size=6, drop_uncertain=0.5), tmp_path / "kept",
                      progress=False)
    assert (kept.kept, kept.dropped) == (6, 6)
    kept_keys = [s.key for s in ShardReader(tmp_path / "kept")]
    lowest = sorted(scores, key=lambda k: (scores[k], k))[:6]
    assert kept_keys == sorted(lowest)
    assert max(scores[k] for k in kept_keys) <= min(scores[k] for k in scores if k not in kept_keys)
    with pytest.raises(LabelgenError, match="other settings"):  # resume must not mix settings
        synthesize(trained.teacher(), SynthesisConfig(n=6, shard_size=6, drop_uncertain=0.25), tmp_path / "kept", progress=False)


def test_from_images_pseudo_labels_real_images(trained, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for seed in range(900, 905):
        Image.fromarray(render(seed, 64)).save(folder / f"img{seed}.png")
    summary = synthesize(trained.teacher(), SynthesisConfig(n=None, shard_size=2, from_images=str(folder)), tmp_path / "out",
                         progress=False)
    assert summary.kept == 5
    matrix = ConfusionMatrix(3)
    for s in ShardReader(tmp_path / "out"):
        seed = int(s.meta["source_image"][3:6])
        assert s.meta["source_size"] == [64, 64] and s.image.shape == (32, 32, 3)
        matrix.update(s.mask, layout(seed, 64)[::2, ::2])
    assert matrix.compute().miou > 0.7


def test_from_images_refused_for_gan(tmp_path):
    ws = annotated_workspace(tmp_path / "gan", count=1)
    create_head("pixel-mlp", ws.head_in_channels, 3, ws.resolution).save_pretrained(
        ws.heads_dir, extra={"generator": ws.generator_id()})
    with pytest.raises(LabelgenError, match="^--from-images needs features of real images"):
        synthesize(ws.teacher(), SynthesisConfig(n=None, from_images=str(tmp_path)), tmp_path / "out", progress=False)


def _cli(ws, out, extra_env=None, torchrun=False) -> subprocess.Popen:
    args = ["synthesize", "-w", str(ws.root), "--n", "12", "--shard-size", "2", "--batch-size", "2",
            "--drop-uncertain", "0.25", "--out", str(out)]
    prefix = ([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m",
               "labelgen.cli", "--"] if torchrun else [sys.executable, "-m", "labelgen.cli"])
    return subprocess.Popen(prefix + args, env={**subprocess_env(), **(extra_env or {})}, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """The CLI settings of _cli, made by one uninterrupted in-process run."""
    out = tmp_path_factory.mktemp("ref") / "out"
    synthesize(trained.teacher(), SynthesisConfig(n=12, shard_size=2, batch_size=2, drop_uncertain=0.25), out, progress=False)
    return contents(out)


def test_resume_after_sigkill_gives_identical_samples(trained, reference, tmp_path):
    out = tmp_path / "out"
    kill_when_written(_cli(trained, out, {"TEACHER_FAKES_DELAY": "0.15"}), out / "000001.json")
    done_before = {p.name for p in out.glob("0*.json")}
    assert 0 < len(done_before) < 6 and not (out / "manifest.json").exists()
    proc = _cli(trained, out)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not list(out.glob("*.tmp"))
    assert contents(out) == reference  # no duplicate, missing or changed sample
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["kept"] == 12 and manifest["config"]["dropped"] == 6


def test_torchrun_two_processes_match_one(trained, reference, tmp_path):
    proc = _cli(trained, tmp_path / "out", torchrun=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert contents(tmp_path / "out") == reference
    assert out.count("kept 12 samples") == 1  # rank 0 reports


@pytest.mark.parametrize("backend", ["dcgan", "ddpm"])
def test_real_backends_end_to_end(tmp_path, backend):
    """init on a saved tiny generator -> sample -> annotate -> train-heads -> synthesize, through the CLI
    functions, with the real dcgan (recipe features) and ddpm (features of the stored PNG) backends."""
    from labelgen.cli import main
    from labelgen.generators import create_generator
    from labelgen.workspace import Workspace

    torch.manual_seed(0)
    if backend == "dcgan":
        create_generator("dcgan", ngf=8, nz=16).save_pretrained(tmp_path / "g")
        extra = []
    else:
        unet = {"sample_size": [16, 16], "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
                "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
        create_generator("ddpm", unet_config=unet, ddim_steps=2).save_pretrained(tmp_path / "g")
        extra = ["--timesteps", "50,400", "--feature-layers", "1"]

    def cli(*args):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            assert e.code in (0, None), e.code

    w = tmp_path / "w"
    cli("init", w, "--generator", backend, "--checkpoint", tmp_path / "g", "--classes", "dark,bright", "--head", "conv",
        *extra)
    cli("sample", "-w", w, "--n", "2")
    ws = Workspace(w)
    if backend == "ddpm":
        assert ws.config.generator_options == {"feature_layers": [1], "timesteps": [50, 400]}
        assert len(ws.config.feature_channels) == 2  # one level x two timesteps
    for annotation_id in ws.annotation_ids():
        ws.save_mask(annotation_id, (ws.read_annotation(annotation_id)[0].mean(2) > 127).astype(np.uint8))
    cli("train-heads", "-w", w, "--epochs", "2")
    cli("synthesize", "-w", w, "--n", "3", "--shard-size", "2", "--out", tmp_path / "out", "--soft-labels", "uint8")
    samples = list(ShardReader(tmp_path / "out"))
    assert [s.key for s in samples] == ["000000000", "000000001", "000000002"]
    assert samples[0].image.shape[:2] == ws.resolution and samples[0].meta["generator"] == ws.generator_id()


def test_output_folder_in_use_is_refused(trained, tmp_path):
    """A second synthesis into a folder another run holds is refused with the holder's pid."""
    from labelgen.run import RunLock

    out = tmp_path / "out"
    with RunLock(out, "synthesize"):
        proc = _cli(trained, out)
        _, err = proc.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and f"in use by pid {os.getpid()}" in lines[0], err
    assert not list(out.glob("0*.tar"))


def _shard_files(out: Path) -> dict[str, bytes | list]:
    """Every shard index's bytes and every shard tar's members (name, bytes) of a finished set (the manifest
    holds timings, a tar header the time it was written)."""
    import tarfile

    files: dict[str, bytes | list] = {}
    for p in sorted(out.iterdir()):
        if p.name[0].isdigit() and p.suffix == ".json":
            files[p.name] = p.read_bytes()
        elif p.name[0].isdigit() and p.suffix == ".tar":
            with tarfile.open(p) as tar:
                files[p.name] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return files


def test_pipelined_synthesis_writes_the_same_bytes_as_sequential(trained, tmp_path, monkeypatch):
    """Labelling in a background thread while the next batch samples, encoding in 3 threads: the shards are
    member for member (names and bytes) those of one-thing-at-a-time synthesis (several shards, a partial batch, drops, soft labels)."""
    from labelgen.teacher import Teacher

    threads = []
    predict = Teacher.predict

    def recording_predict(self, *args, **kwargs):
        threads.append(__import__("threading").current_thread().name)
        return predict(self, *args, **kwargs)

    monkeypatch.setattr(Teacher, "predict", recording_predict)
    settings = dict(n=7, shard_size=3, batch_size=2, drop_uncertain=0.25, soft_labels="uint8")
    sequential = synthesize(trained.teacher(), SynthesisConfig(**settings, overlap=False, encode_workers=0), tmp_path / "seq",
                            progress=False)
    assert threads and all(name == "MainThread" for name in threads)
    threads.clear()
    pipelined = synthesize(trained.teacher(), SynthesisConfig(**settings, overlap=True, encode_workers=3), tmp_path / "pipe",
                           progress=False)
    assert threads and all(name.startswith("label") for name in threads)
    assert (pipelined.kept, pipelined.dropped, pipelined.shards) == (sequential.kept, sequential.dropped, 3)
    files = _shard_files(tmp_path / "seq")
    assert len(files) == 6 and files == _shard_files(tmp_path / "pipe")


def test_encode_workers_default_is_sized_from_the_machine(monkeypatch):
    import re

    from click.testing import CliRunner

    from labelgen.cli import cli
    from labelgen.synthesis.synthesize import default_encode_workers

    help_text = CliRunner().invoke(cli, ["synthesize", "--help"], terminal_width=200).output
    shown = re.search(r"--encode-workers.*?\[default: (\d+)", help_text, re.S)
    assert shown and int(shown.group(1)) == default_encode_workers() and "--overlap / --no-overlap" in help_text
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    assert default_encode_workers() == 11
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_encode_workers() == 1 and SynthesisConfig().encode_workers == 1
    assert not {"encode_workers", "overlap", "batch_size"} & set(SynthesisConfig().plan_key())

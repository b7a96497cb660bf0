"""Both head types ensembled (labelgen/teacher.py predict_heads): `train-heads --type conv` keeps the workspace's
pixel-MLP in W/heads/ and adds W/heads/conv/; the Teacher averages every member of both; old single-head
workspaces (and the embedded default) load as before; synthesis runs with both and records both."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from labelgen import default_teacher
from labelgen.data.shards import ShardReader
from labelgen.errors import LabelgenError
from labelgen.heads import TaskHead, head_id
from labelgen.heads.train import TrainConfig, evaluate_head
from labelgen.synthesis import SynthesisConfig, synthesize
from labelgen.workspace import CONFIG_NAME, Workspace
from teacher_fakes import annotated_workspace, subprocess_env, train_workspace_heads

TRAIN = TrainConfig(epochs=1, pixels_per_image=128)


@pytest.fixture
def two_heads(tmp_path):
    ws = annotated_workspace(tmp_path / "w", backend="FakeDiffusion", count=3)
    train_workspace_heads(ws, TRAIN, progress=False)
    train_workspace_heads(ws, TRAIN, progress=False, head_type="conv")
    return ws


def test_ensemble_of_two_heads_is_the_mean_of_the_heads(two_heads):
    ws = two_heads
    assert (ws.heads_dir / "head_config.json").is_file() and (ws.heads_dir / "conv" / "head_config.json").is_file()
    assert list(ws.trained_heads()) == ["pixel-mlp", "conv"]
    teacher = ws.teacher()
    assert [h.head_type for h in teacher.heads] == ["pixel-mlp", "conv"]
    assert teacher.head_type == "pixel-mlp+conv" and teacher.ensemble == 3 + 1
    image = ws.read_annotation("g000001")[0]
    features = teacher.features(images=[image])
    mlp = TaskHead.from_pretrained(ws.heads_dir).predict_proba(features)  # [1, 3, C, H, W]
    conv = TaskHead.from_pretrained(ws.heads_dir / "conv").predict_proba(features)  # [1, 1, C, H, W]
    pred = teacher.predict(features)
    torch.testing.assert_close(pred.member_probs, torch.cat([mlp, conv], dim=1))
    torch.testing.assert_close(pred.probs, (mlp.mean(dim=1) + conv.mean(dim=1)) / 2)  # each head type counts equally
    assert not torch.allclose(pred.probs, mlp.mean(dim=1)) and not torch.allclose(pred.probs, conv.mean(dim=1))
    assert pred.measure == "js-divergence" and torch.equal(pred.mask, pred.probs.argmax(dim=1).to(torch.uint8))
    # the identity covers both heads; selecting one gives that head's own id and prediction
    ids = {head_id(ws.heads_dir), head_id(ws.heads_dir / "conv")}
    assert teacher.head_id not in ids and len(teacher.head_id) == 12
    only_conv = ws.teacher(heads=["conv"])
    assert only_conv.head_id == head_id(ws.heads_dir / "conv") and only_conv.uncertainty_measure == "entropy"
    torch.testing.assert_close(only_conv.predict(features).probs, conv.mean(dim=1))
    ws.config.heads = ["pixel-mlp"]  # the workspace setting
    assert ws.teacher().head_id == head_id(ws.heads_dir)
    with pytest.raises(LabelgenError, match="not trained"):
        Workspace(ws.root).teacher(heads=["pixel-mlp", "nope"])


def test_head_validation_scores_the_teacher_prediction(two_heads):
    """evaluate_head (validation, --holdout, tune-features) predicts through the Teacher's path."""
    ws = two_heads
    teacher = ws.teacher(heads=["pixel-mlp"])
    ids = ws.annotated_ids()
    examples = [(ws.annotation_features(i), torch.from_numpy(ws.read_mask(i).astype("int64"))[None]) for i in ids]
    scores = evaluate_head(teacher.head, examples, len(ws.classes))
    from labelgen.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(len(ws.classes))
    for features, mask in examples:
        matrix.update(teacher.predict(features).mask.long(), mask)
    assert scores.miou == pytest.approx(matrix.compute().miou)


def test_an_old_single_head_workspace_still_loads(tmp_path):
    ws = annotated_workspace(tmp_path / "w", backend="FakeDiffusion", count=3)
    train_workspace_heads(ws, TRAIN, progress=False)
    config = json.loads((ws.root / CONFIG_NAME).read_text())
    config.pop("heads")  # written before the setting existed
    (ws.root / CONFIG_NAME).write_text(json.dumps(config))
    old = Workspace(ws.root)
    teacher = old.teacher()
    assert len(teacher.heads) == 1 and teacher.head_id == head_id(old.heads_dir) and teacher.ensemble == 3
    if default_teacher.default_teacher_available():
        default = default_teacher.copy_default_workspace(tmp_path / "default")
        assert list(default.trained_heads()) == [default.head_type]
        assert default.teacher().head_id == head_id(default.heads_dir)


def test_synthesis_with_two_heads_runs_and_records_both(two_heads, tmp_path):
    ws = two_heads
    out = tmp_path / "synth"
    synthesize(ws.teacher(), SynthesisConfig(n=2, soft_labels="uint8", shard_size=2), out, progress=False)
    plan = json.loads((out / "synthesis.json").read_text())
    teacher = ws.teacher()
    assert plan["head"] == teacher.head_id and plan["head_type"] == "pixel-mlp+conv" and plan["ensemble"] == 4
    samples = list(ShardReader(out))
    assert len(samples) == 2
    for sample in samples:
        assert sample.meta["head"] == teacher.head_id and sample.meta["uncertainty_measure"] == "js-divergence"
        expected = teacher.label(images=[sample.image])[0]
        np.testing.assert_array_equal(sample.soft, np.round(expected.probs * 255).astype(np.uint8))
    # --heads on the command line: one run's selection (a synthesis with other heads into the same folder is refused)
    env = subprocess_env()
    proc = subprocess.run([sys.executable, "-m", "labelgen.cli", "synthesize", "-w", str(ws.root), "--n", "2",
                           "--out", str(out), "--heads", "conv"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "head" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "labelgen.cli", "synthesize", "-w", str(ws.root), "--n", "2",
                           "--out", str(tmp_path / "bad"), "--heads", "conv,segformer"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "--heads" in proc.stderr and "Traceback" not in proc.stderr


def test_train_heads_type_cli(tmp_path):
    ws = annotated_workspace(tmp_path / "w", backend="FakeDiffusion", count=2)
    proc = subprocess.run([sys.executable, "-m", "labelgen.cli", "train-heads", "-w", str(ws.root), "--type", "conv",
                           "--epochs", "1"], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (ws.heads_dir / "conv" / "head_config.json").is_file() and not (ws.heads_dir / "head_config.json").exists()
    assert str(ws.heads_dir / "conv") in proc.stdout
    assert Workspace(ws.root).teacher().head_type == "conv"  # the only trained head serves alone

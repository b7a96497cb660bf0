"""Task heads: pixel lookup = upsampling, both heads overfit a tiny annotated set, save/load round
trip, training working set independent of the number of annotated images, uncertainty."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labelgen.errors import LabelgenError
from labelgen.heads import TaskHead, create_head, head_id
from labelgen.heads.sampling import features_at_pixels
from labelgen.heads.train import TrainConfig, evaluate_head, train_head
from labelgen.heads.uncertainty import image_scores, pixel_uncertainty
from labelgen.run import read_log, read_progress
from teacher_fakes import annotated_workspace, layout, train_workspace_heads

torch.set_num_threads(1)


def _levels(n=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 5, 4, 4, generator=g), torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 2, 16, 16, generator=g)]


def test_pixel_lookup_equals_bilinear_upsampling():
    levels = _levels()
    full = torch.cat([F.interpolate(l, size=(16, 16), mode="bilinear", align_corners=False) for l in levels], 1)
    ys, xs = torch.randint(16, (2, 50)), torch.randint(16, (2, 50))
    picked = features_at_pixels(levels, ys, xs, (16, 16))  # [N, P, D]
    expected = full[torch.arange(2)[:, None], :, ys, xs]  # [N, P, D]
    torch.testing.assert_close(picked, expected, atol=1e-5, rtol=1e-5)


def test_pixel_mlp_banded_forward_matches_full_upsampling():
    levels = _levels()
    head = create_head("pixel-mlp", [5, 3, 2], 4, (16, 16), ensemble=2, max_chunk_floats=300).eval()
    full = torch.cat([F.interpolate(l, size=(16, 16), mode="bilinear", align_corners=False) for l in levels], 1)
    expected = head.forward_pixels(full.permute(0, 2, 3, 1).reshape(-1, 10)).view(2, 16, 16, 2, 4).permute(0, 3, 4, 1, 2)
    logits = head(levels)
    assert logits.shape == (2, 2, 4, 16, 16)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head_type", ["pixel-mlp", "conv"])
def test_head_save_load_round_trip(tmp_path, head_type):
    head = create_head(head_type, [5, 3, 2], 4, (16, 16), ensemble=2).eval()
    head.save_pretrained(tmp_path / "h", extra={"note": "x"})
    again = TaskHead.from_pretrained(tmp_path / "h")
    assert type(again) is type(head) and again.config == head.config
    torch.testing.assert_close(again.predict_proba(_levels()), head.predict_proba(_levels()))
    assert len(head_id(tmp_path / "h")) == 12
    with pytest.raises(LabelgenError, match="expects 3 feature levels"):
        again(_levels()[:2])


@pytest.mark.parametrize("head_type,epochs", [("pixel-mlp", 10), ("conv", 25)])
def test_heads_overfit_tiny_annotated_set(tmp_path, head_type, epochs):
    ws = annotated_workspace(tmp_path / "w", head=head_type)
    result = train_workspace_heads(ws, TrainConfig(epochs=epochs, pixels_per_image=512), progress=False)
    assert result.losses[-1] < result.losses[0]
    rows = read_log(ws.heads_dir / "log.csv")  # the run log (one row per epoch): the app's progress
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert [float(r["loss"]) for r in rows] == pytest.approx(result.losses, abs=1e-6)
    assert read_progress(ws.heads_dir / "log.csv") == (result.steps, result.steps)
    head = TaskHead.from_pretrained(ws.heads_dir)  # reloaded without training code
    assert head.head_type == head_type
    ids = ws.annotated_ids()
    train_set = [(ws.annotation_features(i), torch.from_numpy(ws.read_mask(i).astype(np.int64))[None]) for i in ids]
    assert evaluate_head(head, train_set, 3).miou > 0.9
    held_out = [(ws.teacher(head=False).sample([s]).features, torch.from_numpy(layout(s).astype(np.int64))[None])
                for s in (500, 501)]
    assert evaluate_head(head, held_out, 3).miou > 0.8


def test_training_working_set_does_not_grow_with_annotated_images():
    """Only one mini-batch of native-resolution features is loaded at a time, and the per-step
    working set (loaded levels + sampled pixel features) is the same for 3 or 12 images."""
    peaks, max_loaded = {}, {}
    for count in (3, 12):
        loaded_now = []

        def load_example(i):
            loaded_now.append(i)
            g = torch.Generator().manual_seed(i)
            levels = [torch.randn(1, 8, 8, 8, generator=g), torch.randn(1, 4, 32, 32, generator=g)]
            return levels, torch.randint(0, 3, (1, 32, 32), generator=g)

        head = create_head("pixel-mlp", [8, 4], 3, (32, 32), ensemble=2, hidden=[16, 8])
        seen_per_step = []
        result = train_head(head, load_example, count, TrainConfig(epochs=1, images_per_step=2, pixels_per_image=64),
                            on_step=lambda: (seen_per_step.append(len(loaded_now)), loaded_now.clear()))
        peaks[count] = result.peak_step_bytes
        max_loaded[count] = max(seen_per_step)
    assert peaks[3] == peaks[12] > 0
    assert max_loaded[3] == max_loaded[12] == 2


def test_uncertainty_js_divergence_and_entropy():
    agree = torch.softmax(torch.randn(1, 1, 3, 4, 4), 2).expand(1, 3, 3, 4, 4)  # K = 3 identical members
    assert pixel_uncertainty(agree).abs().max() < 1e-6
    disagree = torch.zeros(1, 2, 2, 4, 4)
    disagree[:, 0, 0], disagree[:, 1, 1] = 1, 1  # confident members, opposite classes
    assert torch.allclose(pixel_uncertainty(disagree), torch.full((1, 4, 4), float(np.log(2))), atol=1e-5)
    single = torch.full((1, 1, 2, 4, 4), 0.5)  # K = 1: entropy
    assert torch.allclose(pixel_uncertainty(single), torch.full((1, 4, 4), float(np.log(2))), atol=1e-5)
    unc = torch.zeros(2, 10, 10)
    unc[1, :1, :] = 1.0  # 10 % of pixels maximally uncertain
    scores = image_scores(unc, top_fraction=0.1)
    assert scores[0] == 0 and scores[1] == 1


def test_train_heads_cli_prints_val_miou_per_epoch(tmp_path, capsys):
    """--val FOLDER (real images + masks, project format; here 64x64, resized to the generator's 32x32)."""
    from PIL import Image

    from labelgen.cli import main
    from labelgen.data.classes import ClassList
    from teacher_fakes import CLASSES, render

    ws = annotated_workspace(tmp_path / "w", backend="FakeDiffusion", head="conv")
    val = tmp_path / "val"
    (val / "images").mkdir(parents=True), (val / "masks").mkdir()
    ClassList.from_names(CLASSES.split(",")).save(val / "classes.json")
    for seed in (300, 301):
        Image.fromarray(render(seed, 64)).save(val / "images" / f"{seed}.png")
        Image.fromarray(layout(seed, 64)).save(val / "masks" / f"{seed}.png")
    try:
        main(["train-heads", "-w", str(ws.root), "--epochs", "12", "--val", str(val)])
    except SystemExit as e:
        assert e.code in (0, None)
    out = capsys.readouterr()
    epoch_lines = [line for line in (out.out + out.err).splitlines() if "val mIoU" in line and line.startswith("epoch")]
    assert len(epoch_lines) == 12, out
    assert float(epoch_lines[-1].rsplit(" ", 1)[1]) > 0.8
    assert json.loads((ws.heads_dir / "head_config.json").read_text())["meta"]["val_miou"] > 0.8


def test_teacher_prediction_of_an_annotation(tmp_path):
    ws = annotated_workspace(tmp_path / "w", count=2)
    train_workspace_heads(ws, TrainConfig(epochs=8, pixels_per_image=512), progress=False)
    teacher = ws.teacher()
    pred = teacher.predict(ws.annotation_features("g000002"))[0]
    assert pred.mask.shape == (32, 32) and pred.probs.shape == (3, 32, 32) and pred.uncertainty.shape == (32, 32)
    assert (pred.mask == ws.read_mask("g000002")).mean() > 0.95 and pred.score >= 0


def test_conv_fuse_per_level_equals_concat_then_fuse():
    head = create_head("conv", [5, 3, 2], 4, (16, 16), hidden=8).eval()
    member, levels = head.members[0], _levels()
    upsampled = [F.interpolate(p(l), size=(16, 16), mode="bilinear", align_corners=False)
                 for p, l in zip(member.project, levels)]
    expected = member.classify(member.blocks(member.fuse(torch.cat(upsampled, 1))))
    torch.testing.assert_close(head(levels)[:, 0], expected, atol=1e-5, rtol=1e-4)


def test_train_heads_holdout_writes_per_class_iou_of_images_not_trained_on(tmp_path, monkeypatch, capsys):
    """--holdout K: the last K annotated ids are never loaded for training; train_log.json (atomic) holds
    their per-class IoU + mIoU (ConfusionMatrix of the ensemble-mean prediction), printed as a table."""
    import labelgen.heads.train as train_module
    from labelgen.cli import main
    from labelgen.metrics import ConfusionMatrix

    from labelgen.annotations import FeatureStore

    ws = annotated_workspace(tmp_path / "w", count=4)
    trained_on, in_training = set(), []
    real_features, real_train_head = FeatureStore.annotation, train_module.train_head

    def spy_features(self, teacher, annotations, annotation_id, mirror=False):
        if in_training:
            trained_on.add(annotation_id)
        return real_features(self, teacher, annotations, annotation_id, mirror)

    def spy_train_head(*args, **kwargs):
        in_training.append(True)
        try:
            return real_train_head(*args, **kwargs)
        finally:
            in_training.clear()

    monkeypatch.setattr(FeatureStore, "annotation", spy_features)
    monkeypatch.setattr(train_module, "train_head", spy_train_head)
    lines = []
    result = train_workspace_heads(ws, TrainConfig(epochs=6, pixels_per_image=512), progress=False, holdout=1,
                                   log=lines.append)
    assert trained_on == {"g000001", "g000002", "g000003"}  # g000004 is held out
    log = json.loads((ws.heads_dir / "train_log.json").read_text())
    assert log["train_ids"] == ["g000001", "g000002", "g000003"] and log["holdout"]["ids"] == ["g000004"]
    assert list(log["holdout"]["per_class"]) == ["background", "disc", "bar"]
    # the logged numbers are the ConfusionMatrix scores of the saved head on the held-out image
    head = TaskHead.from_pretrained(ws.heads_dir)
    matrix = ConfusionMatrix(3)
    probs = head.predict_proba(ws.annotation_features("g000004"))
    matrix.update(probs.mean(1).argmax(1), torch.from_numpy(ws.read_mask("g000004").astype(np.int64))[None])
    scores = matrix.compute()
    assert log["holdout"]["per_class"]["disc"] == pytest.approx(scores.per_class_iou[1])
    assert log["holdout"]["miou"] == pytest.approx(scores.miou) == pytest.approx(result.holdout.miou)
    assert log["holdout"]["miou"] > 0.6
    assert "| disc |" in lines[-1] and "g000004" in lines[-1]
    meta = json.loads((ws.heads_dir / "head_config.json").read_text())["meta"]
    assert meta["annotations"] == log["train_ids"] and meta["holdout"] == ["g000004"]
    assert not list(ws.heads_dir.glob(".*tmp*"))

    # the CLI: --holdout K prints the table; K must leave an image to train on; --holdout 0 clears it
    for args, code in ((["--holdout", "4"], 2), (["--holdout", "2"], 0), ([], 0)):
        try:
            main(["train-heads", "-w", str(ws.root), "--epochs", "1", *args])
        except SystemExit as e:
            assert (e.code or 0) == code
        out = capsys.readouterr()
        log = json.loads((ws.heads_dir / "train_log.json").read_text())
        if args == ["--holdout", "4"]:
            assert "--holdout 4" in out.err and len(out.err.strip().splitlines()) == 1
        elif args:
            assert "| **mIoU** |" in out.out and "held-out mIoU" in out.out
            assert log["holdout"]["ids"] == ["g000003", "g000004"] and log["train_ids"] == ["g000001", "g000002"]
        else:
            assert log["holdout"] is None and len(log["train_ids"]) == 4


def test_flip_augmentation_trains_on_features_of_the_mirrored_pixels_with_the_mirrored_mask(tmp_path, monkeypatch):
    """augment auto on an image-encoding teacher = flip: the examples are the annotations, then each one's mirror
    image, whose features the generator computes from the mirrored pixels (not the mirrored feature maps: the
    fake below is made position-dependent so the two differ) and whose mask is mirrored; "auto" is saved as what
    it became."""
    import labelgen.heads.train as train_module
    from teacher_fakes import FakeDiffusion

    plain_features = FakeDiffusion.features_of_images

    def position_dependent(self, images, seed=0):  # a ramp over x: not mirror-equivariant
        return [f + torch.linspace(0, 1, f.shape[-1]) for f in plain_features(self, images, seed)]

    monkeypatch.setattr(FakeDiffusion, "features_of_images", position_dependent)
    ws = annotated_workspace(tmp_path / "w", backend="FakeDiffusion", count=2)
    seen, real_train_head = [], train_module.train_head

    def spy_train_head(head, load_example, num_examples, *args, **kwargs):
        seen.extend(load_example(k) for k in range(num_examples))
        return real_train_head(head, load_example, num_examples, *args, **kwargs)

    monkeypatch.setattr(train_module, "train_head", spy_train_head)
    train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=64), progress=False, log=lambda _: None)
    assert len(seen) == 4
    teacher = ws.teacher(head=False)
    for k, annotation_id in enumerate(["g000001", "g000002"]):
        image, _, mask = ws.read_annotation(annotation_id)
        (plain, plain_mask), (mirror, mirror_mask) = seen[k], seen[k + 2]
        assert torch.equal(plain_mask[0], torch.from_numpy(mask.astype(np.int64)))
        assert torch.equal(mirror_mask[0], torch.from_numpy(mask[:, ::-1].astype(np.int64)))
        expected = teacher.features(images=[np.ascontiguousarray(image[:, ::-1])])
        for got, want, unmirrored in zip(mirror, expected, plain):
            torch.testing.assert_close(got, want.cpu())
            assert not torch.allclose(got, unmirrored.flip(-1))  # new feature vectors, not the old ones moved
    log = json.loads((ws.heads_dir / "train_log.json").read_text())
    assert log["train"]["augment"] == "flip" and log["steps"] == 2 * train_module.steps_per_epoch("pixel-mlp", 2, TrainConfig(pixels_per_image=64))
    assert (ws.feature_cache_dir / "annotations" / "g000001.mirror.safetensors").is_file()


def test_flip_augmentation_is_off_for_teachers_that_compute_features_from_recipes(tmp_path):
    ws = annotated_workspace(tmp_path / "w", count=2)  # FakeGAN: no features of arbitrary images
    train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=64), progress=False, log=lambda _: None)
    log = json.loads((ws.heads_dir / "train_log.json").read_text())
    assert log["train"]["augment"] == "none" and log["steps"] == 4  # 2 images / 2 per step x 4 steps
    with pytest.raises(LabelgenError, match="^--augment flip needs features of real images"):
        train_workspace_heads(ws, TrainConfig(epochs=1, augment="flip"), progress=False, log=lambda _: None)

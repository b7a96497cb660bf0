"""The one teacher path (labelgen/teacher.py): for the same item, annotation features, synthesis features, the
app's prediction and the distillation targets are identical, for a GAN teacher, a diffusion teacher and the
embedded default; a generator retrained in place invalidates cached features and refuses old heads."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from labelgen import default_teacher
from labelgen.data.shards import ShardReader
from labelgen.errors import LabelgenError
from labelgen.heads.train import TrainConfig
from labelgen.imaging import images_to_tensor, resize_image, resize_mask
from labelgen.synthesis import SynthesisConfig, synthesize
from labelgen.teacher import Teacher, recipe_of, weights_digest
from labelgen.workspace import Workspace
from teacher_fakes import annotated_workspace, subprocess_env, train_workspace_heads

TEACHERS = ["FakeGAN", "FakeDiffusion", "default"]


def _workspace(kind: str, root):
    if kind == "default":
        if not default_teacher.default_teacher_available():
            pytest.skip("no embedded default teacher in this checkout")
        ws = default_teacher.copy_default_workspace(root / "w")
        ws.config.generator_options["ddim_steps"] = 2  # sampling-only: the heads stay valid, the test stays fast
        ws.save_config()
        return Workspace(ws.root)
    ws = annotated_workspace(root / "w", backend=kind, count=3)
    train_workspace_heads(ws, TrainConfig(epochs=2, pixels_per_image=256), progress=False)
    return ws


@pytest.mark.parametrize("kind", TEACHERS)
def test_same_item_same_features_everywhere(kind, tmp_path, monkeypatch):
    from labelgen.app import heads_bridge
    from labelgen.student.distill import TeacherTargets

    ws = _workspace(kind, tmp_path)
    seed = 424242
    annotation_id = ws.sample_annotations(1, seed_start=seed)[0]
    annotation = ws.annotation_features(annotation_id)  # [1, C_i, h_i, w_i] per selected level

    # synthesis: candidate 0 has seed seed_base; capture the features it hands to the head
    seen: list[list[torch.Tensor]] = []
    original_predict = Teacher.predict
    monkeypatch.setattr(Teacher, "predict", lambda self, f, *a: seen.append([x.clone() for x in f])
                        or original_predict(self, f, *a))
    synthesize(ws.teacher(), SynthesisConfig(n=1, batch_size=1, seed_base=seed, soft_labels="uint8"), tmp_path / "synth",
               progress=False)
    monkeypatch.setattr(Teacher, "predict", original_predict)
    assert len(seen) == 1
    for a, s in zip(annotation, seen[0], strict=True):
        torch.testing.assert_close(s, a, rtol=0, atol=0)
    [sample] = list(ShardReader(tmp_path / "synth"))
    np.testing.assert_array_equal(sample.image, ws.read_annotation(annotation_id)[0])  # the same picture

    # the app: prediction of the annotation and of the synthetic sample = prediction of those features
    teacher = ws.teacher()
    expected = teacher.predict(annotation)[0]
    for pred in (heads_bridge.predict_annotation(ws.teacher(), ws, annotation_id),
                 heads_bridge.predict_sample(ws.teacher(), sample)):
        np.testing.assert_array_equal(pred.mask, expected.mask)
        np.testing.assert_array_equal(pred.probs, expected.probs)
        assert pred.score == expected.score
    np.testing.assert_array_equal(sample.mask, expected.mask)  # label-distill targets: the shard's labels
    np.testing.assert_array_equal(sample.soft, np.round(expected.probs * 255).astype(np.uint8))
    assert sample.meta["uncertainty"] == pytest.approx(expected.score, abs=1e-6)

    # feature distillation: targets of the stored sample (shard meta + image as the student sees it)
    targets = TeacherTargets(ws.teacher(head=False))
    image_pm1 = images_to_tensor(sample.image[None])  # [1, 3, H, W] in [-1, 1]
    for a, t in zip(annotation, targets(image_pm1, [sample.meta], [sample.key]), strict=True):
        torch.testing.assert_close(t, a, rtol=0, atol=0)


def test_recipe_of_normalises_every_dress():
    bare = {"seed": 7, "truncation": 0.7}
    assert recipe_of(bare) == bare
    assert recipe_of({**bare, "source": "generated", "generator": "x:1:2", "from_synthetic": "k"}) == bare
    assert recipe_of({"seed": 7, "recipe": bare, "head": "abc", "uncertainty": 0.1}) == bare  # shard meta
    assert recipe_of({"source": "real", "file": "a.png"}) is None
    assert recipe_of({"source_image": "a.png", "source_size": [4, 4]}) is None
    assert recipe_of(None) is None


def test_gan_teacher_refuses_real_images_in_one_line(tmp_path):
    ws = annotated_workspace(tmp_path / "w", backend="FakeGAN", count=1)
    with pytest.raises(LabelgenError, match=r"^a real photo without a latent .* needs features of real images, which "
                                            "the fake-gan teacher cannot compute"):
        ws.teacher(head=False).features(recipes=[{"source": "real", "file": "x.png"}])


def _cli(*args):
    """The real console program (``python -m labelgen.cli``): exit status and stderr as a user sees them."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "labelgen.cli", *map(str, args)], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)


def _retrain_in_place(folder, scale: float) -> None:
    """What resuming `train-generator --out folder` does: the same files, other weights."""
    from teacher_fakes import FakeDiffusion

    model = FakeDiffusion()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    model.save_pretrained(folder)


def test_retrained_generator_invalidates_features_and_refuses_old_heads(tmp_path):
    gen = tmp_path / "gen"
    _retrain_in_place(gen, 1.0)
    from labelgen.workspace import create_workspace
    from teacher_fakes import CLASSES, layout

    ws = create_workspace(tmp_path / "w", "teacher_fakes:FakeDiffusion", CLASSES.split(","), checkpoint=gen)
    for annotation_id in ws.sample_annotations(2, seed_start=0):
        ws.save_mask(annotation_id, layout(ws.read_annotation(annotation_id)[1]["seed"]))
    train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=128), progress=False)
    before_id, before = ws.generator_id(), ws.annotation_features("g000001")
    proc = _cli("synthesize", "-w", ws.root, "--n", "1", "--out", tmp_path / "ok")
    assert proc.returncode == 0, proc.stderr

    _retrain_in_place(gen, 3.0)
    fresh = Workspace(ws.root)
    assert fresh.generator_id() != before_id
    after = fresh.annotation_features("g000001")  # recomputed, not the cached features of the old weights
    assert not torch.equal(after[0], before[0])
    out = tmp_path / "refused"
    proc = _cli("synthesize", "-w", ws.root, "--n", "1", "--out", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "train-heads" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(LabelgenError, match="train-heads"):
        fresh.teacher()
    train_workspace_heads(fresh, TrainConfig(epochs=1, pixels_per_image=128), progress=False)
    assert fresh.teacher().generator_id == fresh.generator_id()  # retrained heads are accepted


def test_weights_digest_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    import os

    from labelgen import teacher as teacher_module

    monkeypatch.setenv("LABELGEN_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"a" * 1000)
    first = weights_digest(folder)
    assert json.loads((tmp_path / "cache" / "file_digests.json").read_text())  # kept on disk for other commands
    hashed = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: hashed.append(str(p)) or real_open(p, *a, **k))
    teacher_module._DIGESTS.clear()  # a new process: only the disk cache is left
    assert weights_digest(folder) == first and not any(p.endswith("w.bin") for p in hashed)
    (folder / "README.md").write_text("notes")  # documentation and sample grids are not the model
    (folder / "samples.png").write_bytes(b"png")
    (folder / "train").mkdir()
    (folder / "train" / "checkpoint.pt").write_bytes(b"resume state")
    assert weights_digest(folder) == first
    (folder / "w.bin").write_bytes(b"b" * 1000)  # same size, new content (and mtime)
    os.utime(folder / "w.bin", ns=(1, 1))
    assert weights_digest(folder) != first


def test_one_resize_rule():
    from PIL import Image

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, (37, 23)).astype(np.uint8)
    for size in [(96, 64), (10, 7)]:  # nearest at pixel centres, as PIL's NEAREST, both directions
        expected = np.asarray(Image.fromarray(mask).resize(size[::-1], Image.Resampling.NEAREST))
        np.testing.assert_array_equal(resize_mask(mask, size), expected)
        np.testing.assert_array_equal(resize_mask(torch.from_numpy(mask)[None], size)[0].numpy(), expected)
    image = rng.integers(0, 256, (300, 200, 3)).astype(np.uint8)
    small = resize_image(image, (96, 64))  # shrinking: area averaging (the CCP DATACARD's rule), Pillow's BOX
    np.testing.assert_array_equal(small, np.asarray(Image.fromarray(image).resize((64, 96), Image.Resampling.BOX)))
    large = resize_image(image[:20, :10], (60, 30))  # enlarging: bicubic
    np.testing.assert_array_equal(large, np.asarray(Image.fromarray(image[:20, :10]).resize((30, 60),
                                                                                         Image.Resampling.BICUBIC)))
    # a float tensor (the student's input, logits) follows the same rule, within Pillow's 8-bit rounding
    as_tensor = resize_image(torch.from_numpy(image).permute(2, 0, 1)[None].float(), (96, 64))
    assert as_tensor.shape == (1, 3, 96, 64) and np.abs(as_tensor[0].permute(1, 2, 0).numpy() - small).max() < 1
    soft = rng.random((40, 30, 5)).astype(np.float32)  # continuous maps (soft labels) follow the image rule
    assert resize_image(soft, (20, 15)).dtype == np.float32


# ---------------------------------------------------------------- label-quality levers (issue: label quality)
def test_flip_tta_is_the_mean_of_both_views(tmp_path):
    ws = _workspace("FakeDiffusion", tmp_path)
    teacher = ws.teacher()
    image = ws.read_annotation("g000001")[0]
    mirror = np.ascontiguousarray(image[:, ::-1])
    plain = teacher.head.predict_proba(teacher.features(images=[image]))  # [1, K, C, H, W]
    mirrored = teacher.head.predict_proba(teacher.features(images=[mirror])).flip(-1)
    pred = teacher.label(images=[image], flip=True)
    torch.testing.assert_close(pred.member_probs, (plain + mirrored) / 2)
    torch.testing.assert_close(pred.probs, ((plain + mirrored) / 2).mean(dim=1))
    assert not torch.equal(pred.probs, plain.mean(dim=1))  # the mirror view changed something
    gan = _workspace("FakeGAN", tmp_path / "gan")
    with pytest.raises(LabelgenError, match=r"^flip \(test-time augmentation, --tta, --augment flip\) needs features of "
                                            "real images"):
        gan.teacher().label(recipes=[{"seed": 1}], images=[image], flip=True)


def test_synthesize_from_images_labels_real_photos_with_flip_tta(tmp_path, monkeypatch):
    from PIL import Image

    from teacher_fakes import render

    ws = _workspace("FakeDiffusion", tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in (70, 71):
        Image.fromarray(render(seed)[:, 3:]).save(photos / f"p{seed}.png")  # not mirror-symmetric in size either
    out, mirrored = {}, []
    original = Teacher.flipped_features
    monkeypatch.setattr(Teacher, "flipped_features", lambda self, images: mirrored.append(len(images))
                        or original(self, images))
    for tta in ("real", "none"):
        synthesize(ws.teacher(), SynthesisConfig(n=None, from_images=str(photos), soft_labels="uint8", tta=tta),
                   tmp_path / tta, progress=False)
        out[tta] = list(ShardReader(tmp_path / tta))
        assert mirrored == [2], (tta, mirrored)  # the photos' mirror images: with --tta real only
    monkeypatch.setattr(Teacher, "flipped_features", original)
    teacher = ws.teacher()
    for with_tta, without in zip(out["real"], out["none"]):
        expected = teacher.label(images=[with_tta.image], flip=True)[0]
        np.testing.assert_array_equal(with_tta.soft, np.round(expected.probs * 255).astype(np.uint8))
        np.testing.assert_array_equal(without.soft,
                                      np.round(teacher.label(images=[without.image])[0].probs * 255).astype(np.uint8))
    assert json.loads((tmp_path / "real" / "synthesis.json").read_text())["tta"] == "real"


def test_class_balanced_heads_weight_rare_classes_up(tmp_path):
    from labelgen.losses import class_balance_weights, mask_class_frequencies

    ws = annotated_workspace(tmp_path / "w", backend="FakeGAN", count=3)
    frequencies = mask_class_frequencies([ws.read_mask(i) for i in ws.annotated_ids()], 3)
    assert frequencies.sum() == pytest.approx(1.0) and frequencies[0] == frequencies.max()  # background dominates
    weights = class_balance_weights(torch.from_numpy(frequencies), 0.5)
    assert weights[0] == weights.min() and float((torch.from_numpy(frequencies) * weights.double()).sum()) == \
        pytest.approx(1.0, abs=1e-6)
    lines = []
    plain = train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=256, class_balance=0.0), progress=False)
    balanced = train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=256, class_balance=0.5),
                                     progress=False, log=lines.append)
    assert any(line.startswith("class balance (frequency^-0.5): background") for line in lines), lines
    assert balanced.losses[0] != pytest.approx(plain.losses[0], rel=1e-4)  # same data and seed, other loss weights
    assert json.loads((ws.heads_dir / "head_config.json").read_text())["meta"]["train"]["class_balance"] == 0.5


@pytest.mark.parametrize("head_type", ["pixel-mlp", "conv"])
def test_head_training_is_reproducible_from_its_seed(tmp_path, head_type):
    """The same seed gives the same weights whatever the process did before (initial weights included)."""
    from safetensors.torch import load_file

    ws = annotated_workspace(tmp_path / "w", backend="FakeGAN", count=3)
    weights = []
    for seed, global_seed in ((0, 1), (0, 2), (1, 1)):
        torch.manual_seed(global_seed)  # another history of the global RNG: must not matter
        train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=64, seed=seed), head_type=head_type,
                              progress=False)
        weights.append(load_file(str(ws.head_dir(head_type) / "head.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])  # another seed, other weights


def test_synthesize_without_a_workspace_uses_the_embedded_default(tmp_path):
    import os
    import subprocess
    import sys

    if not default_teacher.default_teacher_available():
        pytest.skip("no embedded default teacher in this checkout")
    env = {**subprocess_env(), "LABELGEN_WORKSPACE": ""}
    env.pop("LABELGEN_WORKSPACE")
    proc = subprocess.run([sys.executable, "-m", "labelgen.cli", "synthesize", "--n", "1", "--batch-size", "1",
                           "--out", "synth"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedded default" in proc.stderr
    assert len(list(ShardReader(tmp_path / "synth"))) == 1
    assert os.listdir(default_teacher.DEFAULT_WORKSPACE_DIR / "annotations")  # nothing removed from the package


TINY_DDPM = {"sample_size": [16, 16], "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
             "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}


def test_tune_features_sweeps_timesteps_and_blocks_and_stores_the_choice(tmp_path):
    from labelgen.feature_selection import SWEEP_NAME, SweepConfig, tune_features
    from labelgen.generators import create_generator
    from labelgen.workspace import create_workspace

    create_generator("ddpm", unet_config=TINY_DDPM, ddim_steps=2).save_pretrained(tmp_path / "gen")
    ws = create_workspace(tmp_path / "w", "ddpm", ["dark", "mid", "bright"], checkpoint=tmp_path / "gen")
    for annotation_id in ws.sample_annotations(4, seed_start=0):
        grey = ws.read_annotation(annotation_id)[0].mean(axis=2)
        ws.save_mask(annotation_id, np.digitize(grey, np.percentile(grey, [33, 66])).astype(np.uint8))
    before = ws.generator_id()
    lines = []
    report = tune_features(ws.teacher(head=False), ws, None, SweepConfig(
        timesteps=(10, 300, 700), max_timesteps=2, folds=2, epochs=1, pixels_per_image=64), log=lines.append,
        progress=False)
    report = ws.keep_feature_sweep(report)
    candidates = report["candidates"]
    assert {tuple(c["timesteps"]) for c in candidates} >= {(10,), (300,), (700,)}  # every single timestep scored
    assert all(0 <= c["miou"] <= 1 for c in candidates) and report["scored_on"] == "2-fold over the annotations"
    best = report["best"]
    assert best["miou"] == max(c["miou"] for c in candidates)
    assert json.loads((ws.root / SWEEP_NAME).read_text())["best"] == best
    fresh = Workspace(ws.root)  # stored: the generator computes exactly the chosen levels
    assert fresh.config.generator_options["timesteps"] == best["timesteps"] == fresh.config.timesteps
    blocks = best["blocks"] if fresh.config.generator_options["feature_layers"] is None else \
        fresh.config.generator_options["feature_layers"]
    assert blocks == best["blocks"]
    assert fresh.config.feature_channels == [int(c) for c in fresh.generator().feature_channels]
    assert len(fresh.config.feature_channels) == len(best["timesteps"]) * len(best["blocks"])
    assert fresh.generator_id() != before or (best["timesteps"] == [50, 150, 250])
    assert any(line.startswith("best: ") for line in lines)
    # today's choice (t = 50, 150, 250: none of them a candidate) is the reference, scored as it is
    assert report["before"]["timesteps"] == [50, 150, 250]
    assert report["before"]["blocks"] == candidates[0]["blocks"]  # every block, as the first candidate
    assert {tuple(c["timesteps"]) for c in candidates} <= {(10,), (300,), (700,), (10, 300), (10, 700), (300, 700),
                                                          (50, 150, 250)}  # forward selection: candidates only


def test_forward_selection_goes_past_a_near_tie_and_keeps_the_best_set_seen():
    from labelgen.feature_selection import Candidate, forward_select

    table = {(25,): 0.3650, (50,): 0.3614, (100,): 0.3616, (25, 50): 0.3649, (25, 100): 0.3564,
             (25, 50, 100): 0.3716, (25, 50, 400): 0.3580, (400,): 0.30, (25, 400): 0.35}
    asked = []

    def score(c):
        asked.append(c.timesteps)
        c.miou = table[c.timesteps]
        return c

    best = forward_select(score, (400, 25, 100, 50), (0, 1), max_timesteps=3)
    assert best.timesteps == (25, 50, 100) and best.blocks == (0, 1)  # step 2 lost by 1e-4, step 3 won
    assert (25, 50, 100) in asked and len(asked) == 4 + 3 + 2
    table[(25, 50, 100)] = 0.3650  # a tie with the single timestep: the smaller set
    assert forward_select(score, (400, 25, 100, 50), (0, 1), max_timesteps=3).timesteps == (25,)
    assert forward_select(score, (25, 50), (0,), max_timesteps=3).timesteps == (25,)  # no more than the pool


def test_tune_features_on_a_gan_teacher_selects_blocks(tmp_path):
    from labelgen.feature_selection import SweepConfig, tune_features

    ws = annotated_workspace(tmp_path / "w", backend="FakeGAN", count=4)
    report = tune_features(ws.teacher(head=False), ws, None, SweepConfig(folds=2, epochs=1, pixels_per_image=64),
                           log=lambda *_: None, progress=False)
    ws.keep_feature_sweep(report)
    assert all(c["timesteps"] == [] for c in report["candidates"])
    assert Workspace(ws.root).layer_indices == report["best"]["blocks"]  # the teacher picks (no feature_layers option)
    train_workspace_heads(Workspace(ws.root), TrainConfig(epochs=1, pixels_per_image=64), progress=False)
    assert Workspace(ws.root).teacher().channels == [[8, 8, 4][b] for b in report["best"]["blocks"]]


FEATURE_INFO_GENERATORS = ["dcgan", "adm", "biggan", "stylegan2", "ddpm", "stable-diffusion", "FakeGAN",
                           "FakeDiffusion", "fake"]


def _small_generator(name: str):
    """Every registered backend at toy size (the contract test's configs), the test fakes and the student's fake."""
    import teacher_fakes
    from labelgen.generators import BACKENDS
    from labelgen.student.testing import FakeGenerator
    from test_generators import TINY, _make

    assert set(BACKENDS) <= set(FEATURE_INFO_GENERATORS)  # a new backend is checked here too
    if name in TINY:
        return _make(name, **({"feature_layers": [0, -1]} if name in ("stylegan2", "adm") else {}))
    return FakeGenerator() if name == "fake" else getattr(teacher_fakes, name)()


@pytest.mark.parametrize("name", FEATURE_INFO_GENERATORS)
def test_feature_info_matches_a_forward_pass(name):
    """Teacher.feature_info (channels, stride, size of each selected level) comes from the generator's declared
    feature_channels / feature_strides, with nothing run, and equals the shapes its features have."""
    generator = _small_generator(name)
    levels = list(range(len(generator.feature_channels)))[::-1][:3]  # a selection, not in generator order
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in generator.modules()]
    teacher = Teacher(generator, levels)
    info = teacher.feature_info
    assert not calls  # read from the architecture: no module ran
    for hook in hooks:
        hook.remove()
    features = teacher.sample([1, 2]).features
    assert [lv.index for lv in info] == levels
    assert [(lv.num_chs, *lv.size) for lv in info] == [tuple(f.shape[1:]) for f in features]
    h, w = teacher.resolution
    assert all(h / lv.reduction == lv.size[0] and w / lv.reduction == lv.size[1] for lv in info)
    assert [lv.module for lv in info] == [f"level{i}" for i in levels]


def test_stages_take_a_teacher_built_without_a_workspace(tmp_path, monkeypatch):
    """train_heads, synthesize, evaluate_teacher and tune_features run on a Teacher(generator, levels, head) made in
    memory, with annotations in memory: no workspace folder is read or written (only the outputs asked for)."""
    from labelgen.annotations import Annotations
    from labelgen.feature_selection import SweepConfig, tune_features
    from labelgen.heads.train import train_heads
    from labelgen.student.testing import CLASSES, FakeGenerator, make_folder, scene
    from labelgen.training.evaluate_teacher import evaluate_teacher

    monkeypatch.chdir(tmp_path)
    val = make_folder(tmp_path / "val", 3, seed0=100)
    generator = FakeGenerator(32)
    items = {f"a{i}": (*scene(i, (32, 32)), {"seed": i}) for i in range(4)}
    annotations = Annotations(CLASSES, {k: (image, recipe, mask) for k, (image, mask, recipe) in items.items()})
    result = train_heads(Teacher(generator, [1, 2]), annotations, TrainConfig(epochs=2, pixels_per_image=128),
                         val_folder=val, progress=False, log=lambda *_: None)
    assert result.head.in_channels == [8, 4] and len(result.val_miou) == 2 and result.steps > 0
    teacher = Teacher(generator, [1, 2], result.head, classes=CLASSES)
    summary = synthesize(teacher, SynthesisConfig(n=3, shard_size=2, batch_size=2), tmp_path / "synth",
                         progress=False)
    samples = list(ShardReader(tmp_path / "synth"))
    assert summary.kept == 3 and [s.meta["generator"] for s in samples] == [teacher.generator_id] * 3
    assert json.loads((tmp_path / "synth" / "manifest.json").read_text())["classes"][1]["name"] == "square"
    scores = evaluate_teacher(teacher, val, progress=False)
    assert scores["images"] == 3 and list(scores["per_class_iou"]) == list(CLASSES.names)
    assert scores["miou"] == pytest.approx(result.val_miou[-1])  # the same photos, the same head
    report = tune_features(Teacher(generator), annotations, None, SweepConfig(folds=2, epochs=1, pixels_per_image=64),
                           log=lambda *_: None, progress=False)
    assert report["candidates"] and set(report["best"]["blocks"]) <= {0, 1, 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth", "val"]


def _gan_refusals(tmp_path):
    """Every place that needs a teacher that computes features of real images, asked of a GAN teacher."""
    from labelgen.annotations import Annotations
    from labelgen.app import core
    from labelgen.heads.train import train_heads
    from labelgen.student.distill import TeacherTargets
    from labelgen.student.features import FeaturesConfig, write_features
    from labelgen.student.testing import make_folder
    from labelgen.training.evaluate_teacher import evaluate_teacher
    from teacher_fakes import CLASSES, FakeGAN, layout, render

    ws = annotated_workspace(tmp_path / "w", backend="FakeGAN", count=2)
    train_workspace_heads(ws, TrainConfig(epochs=1, pixels_per_image=64), progress=False)
    teacher, photo = ws.teacher(), render(5)
    photos = make_folder(tmp_path / "photos", 2)
    annotations = Annotations(ws.classes, {"a": (photo, {"seed": 5}, layout(5))})
    return {
        "features of a photo": lambda: teacher.features(recipes=[{"source": "real"}], images=[photo]),
        "flip": lambda: teacher.flipped_features([photo]),
        "synthesize --from-images": lambda: synthesize(teacher, SynthesisConfig(n=None, from_images=str(
            photos / "images")), tmp_path / "s1", progress=False),
        "synthesize --tta all": lambda: synthesize(teacher, SynthesisConfig(n=2, tta="all"), tmp_path / "s2",
                                                   progress=False),
        "train-heads --augment flip": lambda: train_heads(teacher, annotations, TrainConfig(augment="flip")),
        "train-heads --val": lambda: train_heads(teacher, annotations, TrainConfig(epochs=1), val_folder=photos),
        "evaluate": lambda: evaluate_teacher(teacher, photos, progress=False),
        "student": lambda: TeacherTargets(teacher).check_data([{"source_image": "a.png"}]),
        "labelgen features": lambda: write_features(teacher, FeaturesConfig(data=[str(photos)]), tmp_path / "f",
                                                    progress=False),
        "app import": lambda: core.import_real_images(ws, [("a.png", photo)]),
        "generator": lambda: FakeGAN().features_of_images(torch.zeros(1, 3, 32, 32)),
        "class": lambda: Teacher(FakeGAN()).require_image_encoding(CLASSES),
    }


def test_one_refusal_for_a_teacher_that_cannot_encode_images(tmp_path):
    """Teacher.require_image_encoding: every place that needs features of real images refuses a GAN teacher with the
    one line it words, and only labelgen/teacher.py words it."""
    import re

    from teacher_fakes import REPO

    one_line = re.compile(r"^.+ needs features of real images, which the fake-gan teacher cannot compute \(it computes "
                          r"features from generator recipes\); use a diffusion teacher \(ddpm, adm, stable-diffusion\)$")
    for what, call in _gan_refusals(tmp_path).items():
        with pytest.raises(LabelgenError) as refused:
            call()
        assert one_line.match(str(refused.value)), (what, str(refused.value))
    sources = [p for folder in ("labelgen", "student", "app", "data") for p in (REPO / folder).rglob("*.py")]
    worded = [p.relative_to(REPO).as_posix() for p in sources if "needs features of real images, which" in p.read_text()]
    assert worded == ["labelgen/teacher.py"]
    old = ("cannot compute features of real images", "cannot compute features of given images", "inversion method to "
           "compute", "computes them from recipes", "computes features from recipes, not", "needs features of real "
           "images: the", "scoring on real images needs their features", "cannot compute their features")
    assert not [(p.name, w) for p in sources for w in old if w in p.read_text()]

"""Student: losses, soft-label decoding, feature regressor shapes, every training mode, resume, CLI
(eval / predict / export), bad input. Tiny data (32x32 scenes from labelgen.student.testing)."""
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
import torch.nn.functional as F

import labelgen  # noqa: F401
from labelgen.losses import class_balance_weights
from labelgen.run import load_resume
from labelgen.student.data import class_frequencies, one_hot, open_sources
from labelgen.student.distill import (
    FeatureRegressor, TeacherTargets, attention_map, channel_layer_norm, feature_distill_loss,
    hard_label_loss, loss_weights, match_levels, soft_label_loss, student_level_sizes,
)
from labelgen.student.testing import CLASSES, FakeGenerator, make_folder, make_shards, scene, soft_probs
from labelgen.student.train import TrainOptions, train

SIZE = (32, 32)
ENCODER = "resnet18"


def _options(tmp: Path, mode: str, data: Path, out: str, **kw) -> TrainOptions:
    base = dict(mode=mode, data=data if isinstance(data, list) else str(data), out=str(tmp / out), encoder=ENCODER, image_size=SIZE, batch_size=4,
                max_steps=5, lr=3e-3, progress=False, warmup_steps=0, workers=0)  # not the machine-sized default
    return TrainOptions(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CI box is 2 shared cores: intra-op threads oversubscribe it and run ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("student")
    real = make_folder(root / "real", 8, SIZE, split="train")
    make_folder(root / "real", 4, SIZE, split="val", seed0=100)
    shards = make_shards(root / "shards", 8, SIZE)
    return {"root": root, "real": real, "val": root / "real" / "val", "shards": shards}


@pytest.fixture(scope="module")
def supervised_run(tiny) -> tuple[Path, list[float]]:
    result = train(_options(tiny["root"], "supervised", tiny["real"], "sup", val=str(tiny["val"])))
    return result.run_dir, result.losses


# ------------------------------------------------------------------ losses and decoding (fast)
def test_soft_label_loss_equals_ce_for_one_hot_at_tau_1():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    mask = torch.randint(0, 3, (2, 5, 6))
    mask[0, 0, 0] = 255
    probs = torch.from_numpy(one_hot(mask.numpy().astype(np.uint8), 3)).permute(0, 3, 1, 2)  # [2, 3, 5, 6]
    valid = mask != 255
    ce = F.cross_entropy(logits, mask, ignore_index=255)
    assert torch.allclose(soft_label_loss(logits, probs, tau=1.0, valid=valid), ce, atol=1e-6)
    # at tau = 4 the teacher is softened, the loss differs and carries the tau^2 scale
    soft4 = soft_label_loss(logits, probs, tau=4.0, valid=valid)
    assert not torch.allclose(soft4, ce)
    # it is minimised (to 0) by logits equal to tau-softened teacher log-probabilities
    target = torch.log(probs.clamp_min(1e-6))
    assert float(soft_label_loss(target, probs, tau=4.0, valid=valid)) < 1e-5


def test_class_balance_weights():
    freq = torch.tensor([0.80, 0.15, 0.05, 0.0])
    w = class_balance_weights(freq, 0.5)
    assert torch.allclose((freq * w).sum(), torch.tensor(1.0), atol=1e-6)  # pixel-weighted mean stays 1
    assert w[0] < 1 < w[1] < w[2] and float(w[3]) == 1.0  # rarer -> heavier; an absent class keeps 1
    assert torch.allclose(w[2] / w[0], torch.tensor((0.80 / 0.05) ** 0.5), atol=1e-4)
    assert torch.allclose(class_balance_weights(freq, 0.0), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert float(class_balance_weights(torch.tensor([0.999, 0.001]), 1.0).max()) == 10.0  # capped


def test_class_weighted_losses_match_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    mask = torch.randint(0, 3, (2, 4, 5))
    mask[1, 0, 0] = 255
    cw = torch.tensor([0.5, 1.0, 3.0])
    sample_w = torch.tensor([1.0, 2.0])
    w = loss_weights(mask, cw, sample_w)  # [2, 4, 5]
    assert w.shape == mask.shape and float(w[1, 1, 1]) == float(cw[mask[1, 1, 1]] * 2.0)
    per_pixel = F.cross_entropy(logits, mask, ignore_index=255, reduction="none")
    valid = (mask != 255).float()
    expected = (per_pixel * w * valid).sum() / (w * valid).sum()
    assert torch.allclose(hard_label_loss(logits, mask, w), expected, atol=1e-6)
    # the soft loss weighs each pixel the same way (one-hot targets at tau 1 = that CE)
    probs = torch.from_numpy(one_hot(mask.numpy().astype(np.uint8), 3)).permute(0, 3, 1, 2)
    assert torch.allclose(soft_label_loss(logits, probs, 1.0, mask != 255, w), expected, atol=1e-5)
    assert loss_weights(mask, None, sample_w) is sample_w


def test_class_frequencies_count_masks_and_follow_data_weights(tiny):
    folder = open_sources(str(tiny["real"]))
    freq = class_frequencies(folder, len(CLASSES.names))
    counts = np.zeros(len(CLASSES.names))
    for i in range(len(folder)):
        m = folder.load(i, len(CLASSES.names)).mask
        counts += np.bincount(m[m != 255].ravel(), minlength=len(CLASSES.names))
    assert np.allclose(freq, counts / counts.sum())
    # two sources: weighting the second 9x pulls the mix towards its class shares
    both = open_sources([str(tiny["real"]), str(tiny["shards"])])
    f_real = class_frequencies(open_sources(str(tiny["real"])), len(CLASSES.names))
    f_syn = class_frequencies(open_sources(str(tiny["shards"])), len(CLASSES.names))
    mixed = class_frequencies(both, len(CLASSES.names), [1.0, 9.0])
    n_real, n_syn = len(open_sources(str(tiny["real"]))), len(open_sources(str(tiny["shards"])))
    share = 9 * n_syn / (n_real + 9 * n_syn)
    assert np.allclose(mixed, (1 - share) * f_real + share * f_syn)


def test_shard_source_reads_samples_through_the_codec(tiny, tmp_path):
    """The student's shard samples are what the writer encoded: image, mask, meta, and the stored uint8
    soft labels as per-pixel probabilities [H, W, C]; sets without soft labels give None."""
    source = open_sources(str(tiny["shards"]))
    assert len(source) == 8 and source.soft_fraction == 1.0 and source.classes == CLASSES
    for i in range(len(source)):
        image, mask = scene(i, SIZE)
        raw = source.load(i, len(CLASSES))
        assert raw.key == f"s{i:06d}" and np.array_equal(raw.image, image) and np.array_equal(raw.mask, mask)
        assert raw.meta == source.metas[i] and raw.meta["recipe"] == {"seed": i}
        stored = soft_probs(mask, len(CLASSES)).astype(np.float32)  # uint8 [C, H, W]
        assert raw.soft.shape == (*SIZE, 3) and raw.soft.dtype == np.float32
        np.testing.assert_allclose(raw.soft, (stored / stored.sum(0)).transpose(1, 2, 0), atol=1e-6)
        assert np.array_equal(raw.soft.argmax(-1), mask)
    hard = open_sources(str(make_shards(tmp_path / "hard", 4, SIZE, soft=False)))
    assert hard.soft_fraction == 0.0 and hard.load(0, 3).soft is None


def test_feature_loss_parts():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 4, 4) * 3 + 1
    ln = channel_layer_norm(t)
    assert torch.allclose(ln.mean(1), torch.zeros(2, 4, 4), atol=1e-5)
    assert torch.allclose(attention_map(t).norm(dim=1), torch.ones(2))
    loss, parts = feature_distill_loss([ln.clone()], [t])
    assert float(loss) < 1e-6 and parts["feat_mse"] < 1e-6
    loss, parts = feature_distill_loss([torch.zeros_like(t)], [t])
    assert parts["feat_mse"] > 0.5 and float(loss) > parts["feat_mse"]


def _tiny_generator(backend: str):
    """Randomly initialised small real backends (no downloads)."""
    from labelgen.generators import create_generator

    torch.manual_seed(0)
    if backend == "dcgan":
        return create_generator("dcgan", ngf=8, nz=16).eval(), {}
    unet = {"sample_size": [32, 32], "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
            "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
            "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
    return create_generator("ddpm", unet_config=unet, timesteps=[50]).eval(), {"ddim_steps": 2}


def _regressor_shapes(generator, options, image_size, encoder="resnet18"):
    from labelgen.student.models import create_student, encoder_channels

    student = create_student("unet", encoder, 3)
    out = generator.sample([0, 1], **options)
    teacher_sizes = [tuple(f.shape[-2:]) for f in out.features]
    levels = match_levels(student_level_sizes(image_size), teacher_sizes)
    reg = FeatureRegressor(encoder_channels(student), list(generator.feature_channels), levels).eval()
    with torch.no_grad():
        regressed = reg(student.encoder(torch.randn(2, 3, *image_size)))
    for r, f, lv in zip(regressed, out.features, levels):
        assert r.shape[:2] == f.shape[:2]  # batch + generator channels
        assert tuple(r.shape[-2:]) == student_level_sizes(image_size)[lv]
    return levels


@pytest.mark.parametrize("backend", ["fake", "dcgan", "ddpm"])
def test_regressor_matches_generator_feature_shapes(backend):
    if backend == "fake":
        levels = _regressor_shapes(FakeGenerator(32), {}, (32, 32))
        assert levels == [1, 0, 0]  # 4x4 -> stride 8 (4x4); 8x8 and 16x16 -> stride 4 (8x8), the finest
    else:
        levels = _regressor_shapes(*_tiny_generator(backend), (64, 64))
    assert all(0 <= lv < 4 for lv in levels)


def test_convnext_feature_pyramid_feeds_the_regressor():
    """DreamTeacher's student (ConvNeXt through smp's timm encoder, UPerNet): no stride-2 stage (0 channels), then
    strides 4..32 with 40..320 channels; the regressor reads those. A one-stride ViT has no such pyramid (one line)."""
    from labelgen.errors import LabelgenError
    from labelgen.student.models import CONVNEXT_STUDENT, create_student, encoder_channels, feature_pyramid

    arch, encoder = CONVNEXT_STUDENT
    student = create_student(arch, encoder, 3)
    assert encoder_channels(student)[:2] == [3, 0]
    pyramid = feature_pyramid(student, arch, (64, 32))
    assert pyramid == [(40, (16, 8)), (80, (8, 4)), (160, (4, 2)), (320, (2, 1))]
    assert student.training  # left as it was
    teacher_sizes = [(4, 4), (8, 8), (16, 16)]
    levels = match_levels([size for _, size in pyramid], teacher_sizes)
    reg = FeatureRegressor(encoder_channels(student), [16, 8, 4], levels).eval()
    with torch.no_grad():
        regressed = reg(student.encoder(torch.randn(2, 3, 64, 32)))
    assert [tuple(r.shape) for r in regressed] == [(2, c, *pyramid[lv][1]) for c, lv in zip([16, 8, 4], levels)]
    vit, size = _smallest_fit("dpt")
    with pytest.raises(LabelgenError, match="--arch dpt: its encoder's outputs .* are not a stride 4, 8, 16, 32 pyramid"):
        feature_pyramid(create_student("dpt", vit, 3), "dpt", size)


def test_match_levels_nearest_in_log_size():
    student = student_level_sizes((64, 64))  # strides 4..32 -> 16, 8, 4, 2
    assert student == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert match_levels(student, [(4, 4), (8, 8), (16, 16), (32, 32), (1, 1)]) == [2, 1, 0, 0, 3]
    assert match_levels(student, [(6, 6)]) == [1]  # log2 36 is nearer 64 than 16


# ------------------------------------------------------------------ training modes
def _falls(losses: list[float]) -> bool:
    return len(losses) >= 4 and np.mean(losses[-2:]) < np.mean(losses[:2])


def test_supervised_trains_and_checkpoints(supervised_run):
    run_dir, losses = supervised_run
    assert _falls(losses), losses
    config = json.loads((run_dir / "student_config.json").read_text())
    assert config["arch"] == "unet" and config["image_size"] == [32, 32]
    assert [c["name"] for c in config["classes"]] == list(CLASSES.names)
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "last.pt").is_file()
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 1 + len(losses)
    assert any((run_dir / "tb").iterdir())


def test_label_distill_loss_falls(tiny):
    result = train(_options(tiny["root"], "label-distill", tiny["shards"], "ld", hard_weight=0.5,
                            uncertainty_weighting=True, workers=2))
    assert _falls(result.losses), result.losses


def test_class_balance_changes_the_loss_and_logs_weights(tiny):
    lines: list[str] = []
    plain = train(_options(tiny["root"], "label-distill", tiny["shards"], "ld_plain", max_steps=2, class_balance=0.0))
    balanced = train(_options(tiny["root"], "label-distill", tiny["shards"], "ld_cb", max_steps=2, class_balance=0.5),
                     log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any(line.startswith("class balance (frequency^-0.5)") for line in lines), lines
    assert balanced.losses[0] != pytest.approx(plain.losses[0], rel=1e-4)  # same model and batch, other weights


def test_label_distill_without_soft_labels_warns_and_falls_back(tiny):
    hard_only = make_shards(tiny["root"] / "hard_shards", 4, SIZE, soft=False)
    with pytest.warns(UserWarning, match="no soft labels"):
        result = train(_options(tiny["root"], "label-distill", hard_only, "ld_hard", max_steps=1))
    assert result.steps == 1


def test_dreamteacher_trains_the_convnext_upernet_student(tiny):
    """--arch upernet --encoder tu-convnext_atto in dreamteacher mode: the regressor sits on the ConvNeXt pyramid."""
    from labelgen.data.io import load_safetensors
    from labelgen.student.models import CONVNEXT_STUDENT, Student
    from labelgen.teacher import Teacher

    arch, encoder = CONVNEXT_STUDENT
    lines: list[str] = []
    result = train(_options(tiny["root"], "dreamteacher", tiny["shards"], "dt-convnext", arch=arch, encoder=encoder,
                            teacher="unused", max_steps=2), teacher=TeacherTargets(Teacher(FakeGenerator(32))),
                   log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert result.steps == 2 and all(np.isfinite(result.losses))
    assert any(line.startswith("feature levels: teacher (16, 4, 4) -> student stride 8 (4, 4)") for line in lines), lines
    regressor = load_safetensors(result.run_dir / "regressor.safetensors")
    assert [tuple(regressor[f"lateral.{k}.0.weight"].shape[:2]) for k in range(3)] == [(256, 40), (256, 80), (256, 160)]
    reloaded = Student.from_pretrained(result.run_dir)
    model, config = reloaded.net, reloaded.student_config
    assert (config.arch, config.encoder) == CONVNEXT_STUDENT and model(torch.randn(1, 3, *SIZE)).shape == (1, 3, *SIZE)


@pytest.mark.parametrize("mode", ["feature-distill", "dreamteacher"])
def test_feature_modes_loss_falls(tiny, mode):
    from labelgen.teacher import Teacher

    class RecipeOnly(FakeGenerator):  # a GAN-like teacher: targets recomputed from the shard recipes
        can_encode_images = False

    teacher = TeacherTargets(Teacher(RecipeOnly(32)), cache=mode == "dreamteacher")
    assert teacher.use_recipes
    result = train(_options(tiny["root"], mode, tiny["shards"], mode, teacher="unused"), teacher=teacher)
    assert _falls(result.losses), result.losses
    if teacher.cache is not None:  # 5 steps x 4 images went through all 8 samples
        assert len(teacher.cache) == 8 and teacher.cache["0"][0].dtype == torch.float16
    assert (result.run_dir / "regressor.safetensors").is_file()


def test_feature_distill_from_workspace_on_real_images_then_finetune(tiny):
    """--teacher WORKSPACE (generator that encodes images) on a real folder, then --init fine-tune."""
    from labelgen.workspace import create_workspace

    ws = create_workspace(tiny["root"] / "ws", "labelgen.student.testing:FakeGenerator", list(CLASSES.names))
    pre = train(_options(tiny["root"], "feature-distill", tiny["real"], "fd_real", teacher=str(ws.root), max_steps=3))
    assert len(pre.losses) == 3
    fine = train(_options(tiny["root"], "supervised", tiny["real"], "ft", init=str(pre.run_dir), max_steps=1))
    assert fine.init_report.startswith("loaded ") and "encoder" in fine.init_report


# ------------------------------------------------------------------ resume
def test_resume_reproduces_next_step_loss(tiny):
    kw = dict(max_steps=4, save_every=2, hard_weight=0.5)
    full = train(_options(tiny["root"], "label-distill", tiny["shards"], "full", **kw))
    # killed after step 3: the last checkpoint is step 2 (save_every=2), step 3 is lost and redone
    first = train(_options(tiny["root"], "label-distill", tiny["shards"], "killed", **kw), stop_after=3)
    assert first.steps == 3
    state = load_resume(first.run_dir / "last.pt")
    assert state["step"] == 2 and len(state["losses"]) == 2
    resumed = train(_options(tiny["root"], "label-distill", tiny["shards"], "killed", **kw))
    assert resumed.resumed_from == 2
    steps_logged = [line.split(",")[0] for line in (resumed.run_dir / "log.csv").read_text().splitlines()[1:]]
    assert steps_logged == ["1", "2", "3", "4"]
    assert resumed.losses[:2] == full.losses[:2]
    assert resumed.losses[2] == pytest.approx(full.losses[2], rel=1e-5, abs=1e-6)
    assert resumed.losses[3] == pytest.approx(full.losses[3], rel=1e-5, abs=1e-6)


def test_ema_decay_validates_and_saves_the_moving_average_and_resumes_exactly(tiny):
    from labelgen.errors import LabelgenError
    from labelgen.student.evaluate import evaluate_folder
    from labelgen.student.models import Student, create_student

    decay = 0.6
    kw = dict(max_steps=3, save_every=1, ema_decay=decay, val=str(tiny["val"]), val_every=1)
    full = train(_options(tiny["root"], "label-distill", tiny["shards"], "ema_full", **kw))
    # the same run one step at a time (killed after each step, resumed): the raw weights w_k and the average e_k
    raw, avg = [], []
    for k in (1, 2, 3):
        train(_options(tiny["root"], "label-distill", tiny["shards"], "ema_steps", **kw), stop_after=k)
        state = load_resume(tiny["root"] / "ema_steps" / "last.pt")
        assert state["step"] == k
        raw.append({n[len("student."):]: t for n, t in state["module"].items() if n.startswith("student.")})
        avg.append(state["ema"])
    params = set(dict(create_student("unet", ENCODER, len(CLASSES)).named_parameters()))
    for k in (1, 2):  # e_{k+1} = d e_k + (1 - d) w_{k+1}, d = min(decay, (1 + k) / (10 + k)) at update k (0-based)
        d = min(decay, (1 + k) / (10 + k))
        for name in params:
            assert torch.allclose(avg[k][name], d * avg[k - 1][name] + (1 - d) * raw[k][name], atol=1e-6), name
        for name in set(avg[k]) - params:  # buffers (batch-norm statistics): the raw model's
            assert torch.equal(avg[k][name], raw[k][name]), name
    assert any(not torch.allclose(avg[2][n], raw[2][n]) for n in params)  # the average is not the last weights
    # the saved student is the average (resumed run = uninterrupted run), and it is what --val scored
    reloaded = Student.from_pretrained(full.run_dir, weights="last")
    saved, config = reloaded.net, reloaded.student_config
    for name, tensor in saved.state_dict().items():
        assert torch.allclose(tensor, avg[2][name], atol=1e-6), name
    scores, _ = evaluate_folder(saved, config, tiny["val"])
    assert float(scores.miou) == pytest.approx(full.val_miou, abs=1e-9)
    # a run folder is resumed only with the same setting
    with pytest.raises(LabelgenError, match="--ema-decay 0.6, not 0"):
        train(_options(tiny["root"], "label-distill", tiny["shards"], "ema_steps", **{**kw, "ema_decay": 0.0, "max_steps": 4}))
    with pytest.raises(LabelgenError, match=r"--ema-decay must be in \[0, 1\)"):
        train(_options(tiny["root"], "label-distill", tiny["shards"], "ema_bad", ema_decay=1.0))


# ------------------------------------------------------------------ CLI
def _cli(argv, capsys) -> tuple[int, str, str]:
    from labelgen.student.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_prints_table_and_writes_pngs(tiny, supervised_run, capsys, tmp_path):
    run_dir, _ = supervised_run
    code, out, err = _cli(["eval", "--checkpoint", str(run_dir), "--data", str(tiny["val"]), "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "mIoU:" in out and "| square |" in out and "| **mIoU** |" in out
    from PIL import Image
    cm = Image.open(tmp_path / "confusion.png")
    grid = Image.open(tmp_path / "overlays.png")
    assert cm.size[0] > 3 * 28 and grid.size == (3 * 32, 4 * 32)
    assert json.loads((tmp_path / "scores.json").read_text())["miou"] >= 0


def test_predict_writes_palette_masks(tiny, supervised_run, capsys, tmp_path):
    run_dir, _ = supervised_run
    code, out, err = _cli(["predict", "--checkpoint", str(run_dir), "--images", str(tiny["val"] / "images"),
                           "--out", str(tmp_path)], capsys)
    assert code == 0, err
    from PIL import Image
    masks = sorted(tmp_path.glob("*.png"))
    assert len(masks) == 4
    im = Image.open(masks[0])
    assert im.mode == "P" and im.size == (32, 32) and np.asarray(im).max() < 3


def test_flip_tta_predicts_the_mean_of_the_photo_and_its_mirror_image(tiny, supervised_run, capsys, tmp_path):
    """eval / predict --flip: argmax of the mean of the photo's and the mirrored photo's (flipped back)
    probabilities, computed here from the model's own forward passes; scores.json says which."""
    import torch
    from PIL import Image

    from labelgen.data.io import list_images, read_image
    from labelgen.metrics import ConfusionMatrix
    from labelgen.student.evaluate import preprocess
    from labelgen.student.models import Student

    run_dir, _ = supervised_run
    reloaded = Student.from_pretrained(run_dir)
    model, config = reloaded.net, reloaded.student_config
    model.eval()
    code, out, err = _cli(["predict", "--checkpoint", str(run_dir), "--images", str(tiny["val"] / "images"),
                           "--out", str(tmp_path / "masks"), "--flip"], capsys)
    assert code == 0, err
    cm = ConfusionMatrix(len(CLASSES.names))
    for path in list_images(tiny["val"] / "images"):
        x = preprocess(read_image(path), config)  # [1, 3, 32, 32]: the training size, no resize back
        with torch.no_grad():
            probs = torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1).flip(-1)
        expected = probs.argmax(1)[0].numpy()
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "masks" / f"{path.stem}.png")), expected)
        cm.update(expected.astype(np.uint8), np.asarray(Image.open(tiny["val"] / "masks" / f"{path.stem}.png")))
    for flip in (True, False):
        code, out, err = _cli(["eval", "--checkpoint", str(run_dir), "--data", str(tiny["val"]),
                               "--out", str(tmp_path / f"eval-{flip}"), "--flip" if flip else "--no-flip"], capsys)
        assert code == 0, err
        scores = json.loads((tmp_path / f"eval-{flip}" / "scores.json").read_text())
        assert scores["flip_tta"] is flip
    assert json.loads((tmp_path / "eval-True" / "scores.json").read_text())["miou"] == pytest.approx(cm.compute().miou)


def test_export_onnx_matches(supervised_run, capsys, tmp_path):
    run_dir, _ = supervised_run
    code, out, err = _cli(["export", "--checkpoint", str(run_dir), "--onnx", str(tmp_path / "s.onnx")], capsys)
    assert code == 0, err
    diff = float(out.strip().rsplit(":", 1)[1])
    assert diff < 1e-3 and (tmp_path / "s.onnx").stat().st_size > 1e6


@pytest.mark.parametrize("argv, message", [
    (["train", "--mode", "supervised", "--data", "/nonexistent", "--out", "x"], "not found"),
    (["train", "--mode", "feature-distill", "--data", "DATA", "--out", "x"], "--teacher"),
    (["eval", "--checkpoint", "/nonexistent", "--data", "DATA"], "not a student run folder"),
    (["train", "--mode", "supervised", "--data", "DATA", "--out", "x", "--batch-size", "64"], "lower --batch-size"),
])
def test_bad_input_one_line_exit_2(tiny, capsys, argv, message, tmp_path):
    argv = [str(tiny["real"]) if a == "DATA" else str(tmp_path / a) if a == "x" else a for a in argv]
    code, out, err = _cli(argv, capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.parametrize("mode, workers", [("supervised", 0), ("label-distill", 0), ("supervised", 1)])
def test_shard_mask_id_beyond_the_classes_is_one_line_exit_2(tiny, capsys, tmp_path, mode, workers):
    """A shard mask holding class id 5 in a 3-class set: refused in both modes (also when a DataLoader
    worker finds it), naming shard and member."""
    from labelgen.data.shards import ShardSample, ShardWriter

    samples = []
    for i in range(4):
        image, mask = scene(i, SIZE)
        if i == 2:
            mask = mask.copy()
            mask[0, 0] = 5
        samples.append(ShardSample(f"s{i:06d}", image, mask, {}, soft=soft_probs(np.minimum(mask, 2), 3)))
    writer = ShardWriter(tmp_path / "bad", CLASSES)
    writer.write_shard(0, samples)
    writer.write_manifest()
    code, out, err = _cli(["train", "--mode", mode, "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "x"),
                           "--encoder", ENCODER, "--image-size", "32x32", "--batch-size", "4", "--max-steps", "1",
                           "--workers", str(workers), "--no-progress"], capsys)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("warn", "  "))]
    assert code == 2 and lines[-1].startswith("error: "), err
    assert "000000.tar: s000002.mask.png: class id 5 out of range (classes 0..2" in lines[-1], err
    assert len([line for line in err.splitlines() if line.startswith("error")]) == 1 and "Traceback" not in err


# ------------------------------------------------------------------ DDP
def test_two_process_ddp(tiny, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "labelgen.student.cli", "train", "--mode", "label-distill", "--data", str(tiny["shards"]),
           "--out", str(out), "--encoder", ENCODER, "--image-size", "32x32", "--batch-size", "2",
           "--max-steps", "2", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_resume(out / "last.pt")
    assert state["step"] == 2 and len(state["rng"]) == 2  # both ranks' RNG states
    assert proc.stdout.count("trained 2 steps") == 1  # rank 0 reports


# ------------------------------------------------------------------ registry
def _smallest_fit(arch: str) -> tuple[str, tuple[int, int]]:
    """A tiny encoder and the smallest square image ``arch`` takes (dpt: timm's test ViT, patch 16)."""
    import timm

    from labelgen.student.models import ARCH_MIN_SIZE

    vit = "tu-test_vit" if timm.list_models("test_vit") else "tu-vit_tiny_patch16_224"  # test_vit: newer timm
    return (vit if arch == "dpt" else ENCODER), (ARCH_MIN_SIZE.get(arch, 32),) * 2


def _registered_students() -> list[tuple[str, str | None]]:
    """Every architecture of smp's registry (its encoder: _smallest_fit's) and DreamTeacher's ConvNeXt + UPerNet."""
    from labelgen.student.models import CONVNEXT_STUDENT, architectures

    return [(arch, None) for arch in architectures()] + [CONVNEXT_STUDENT]


@pytest.mark.parametrize("arch, encoder", _registered_students())
def test_every_smp_architecture_trains_saves_and_loads(arch, encoder, tiny):
    """smp's whole registry (segformer, dpt, upernet, ...): forward, one train step, save, load back."""
    from labelgen.student.models import Student, check_image_size, create_student

    fit, size = _smallest_fit(arch)
    encoder = encoder or fit
    model = create_student(arch, encoder, 3).eval()
    check_image_size(model, arch, size)
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)
    result = train(_options(tiny["root"], "supervised", tiny["real"], f"arch-{arch}-{encoder}", arch=arch,
                            encoder=encoder, image_size=size, batch_size=2, max_steps=1))
    assert result.steps == 1 and np.isfinite(result.losses[0])
    reloaded = Student.from_pretrained(result.run_dir)
    loaded, config = reloaded.net, reloaded.student_config
    assert (config.arch, config.encoder, config.image_size) == (arch, encoder, list(size))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        y = loaded(x)
    assert y.shape == (2, 3, *size) and torch.isfinite(y).all()
    fresh = create_student(arch, encoder, 3).eval()  # another random init: the trained weights were loaded
    with torch.no_grad():
        assert not torch.allclose(fresh(x), y)


@pytest.mark.parametrize("arch, size, need", [("fpn", (48, 48), "divisible by 32"), ("pan", (64, 64), "at least 128"),
                                               ("deeplabv3", (36, 36), "divisible by 8")])
def test_image_size_an_architecture_cannot_take_is_one_clear_error(arch, size, need):
    from labelgen.errors import LabelgenError
    from labelgen.student.models import check_image_size, create_student

    with pytest.raises(LabelgenError, match=need):
        check_image_size(create_student(arch, ENCODER, 3), arch, size)


def test_create_student_refuses_unknown_names():
    from labelgen.errors import LabelgenError
    from labelgen.student.models import create_student

    with pytest.raises(LabelgenError, match="unknown student architecture .*segformer, dpt"):
        create_student("segnet", "resnet18", 3)
    with pytest.raises(LabelgenError, match="encoder"):
        create_student("unet", "no-such-encoder", 3)
    with pytest.raises(LabelgenError, match="cannot build unet with encoder 'tu-no-such'"):
        create_student("unet", "tu-no-such", 3)
    with pytest.raises(LabelgenError, match="dpt needs a timm ViT encoder"):
        create_student("dpt", "resnet18", 3)


def test_dpt_cli_errors_are_one_line(tiny, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    base = [sys.executable, "-m", "labelgen.student.cli", "train", "--data", str(tiny["real"]), "--image-size",
            "32x32", "--max-steps", "1", "--no-progress", "--arch", "dpt"]
    for extra, message in [(["--mode", "supervised", "--out", str(tmp_path / "a")], "dpt needs a timm ViT encoder"),
                           (["--mode", "feature-distill", "--teacher", str(tmp_path), "--encoder", "tu-test_vit",
                             "--out", str(tmp_path / "b")], "one-stride ViT encoder has none")]:
        proc = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
            proc.stderr


def test_augmentation_moves_image_mask_and_soft_labels_together(tiny):
    from labelgen.student.data import StudentDataset, open_source
    from labelgen.student.models import IMAGENET_MEAN, IMAGENET_STD

    source = open_source(tiny["shards"])
    plain = StudentDataset(source, 3, (48, 48), IMAGENET_MEAN, IMAGENET_STD, augment=False, want_soft=True)
    aug = StudentDataset(source, 3, (48, 48), IMAGENET_MEAN, IMAGENET_STD, augment=True, want_soft=True)
    moved = 0
    for epoch in range(4):
        a, p = aug[(1, epoch)], plain[(1, epoch)]
        assert a["soft"].shape == (3, 48, 48) and a["mask"].shape == (48, 48)
        valid = (a["mask"] != 255) & (a["soft"].sum(0) > 0.5)
        agree = (a["soft"].argmax(0) == a["mask"])[valid].float().mean()
        assert agree > 0.95, float(agree)
        moved += not torch.equal(a["mask"], p["mask"])
        # the disc's pixels (class 2) are blue in the augmented image too
        disc = a["mask"] == 2
        assert a["image_pm1"][2][disc].mean() > a["image_pm1"][0][disc].mean()
    assert moved >= 1  # some epochs flip / shift the sample
    again = aug[(1, 0)]
    assert torch.equal(again["image"], aug[(1, 0)]["image"])  # seeded by (seed, epoch, index)


# ------------------------------------------------------------------ several sources, model selection on val
def test_weighted_sampler_proportions_determinism_and_rank_slices(tiny):
    from labelgen.student.data import ResumableSampler, StudentDataset, open_sources, source_quotas
    from labelgen.student.models import IMAGENET_MEAN, IMAGENET_STD

    sizes, weights = [40, 8], [1.0, 5.0]  # 8 "real" images drawn 5x as often as a synthetic one
    assert source_quotas(sizes, weights) == [24, 24] and source_quotas([3000, 20], [1, 4]) == [2942, 78]
    sampler = ResumableSampler(48, 4, seed=3, sizes=sizes, weights=weights)
    counts = np.zeros(48, int)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        draws = sampler.epoch_draws()
        assert len(draws) == 48 and len(set(draws)) == 48  # a repeated index gets a new copy number
        for i, _ in draws:
            counts[i] += 1
    assert counts[40:].sum() == 72 and set(counts[40:]) == {9}  # exactly 3 copies per epoch each
    assert counts[:40].sum() == 72
    sampler.set_epoch(1)
    again = ResumableSampler(48, 4, seed=3, sizes=sizes, weights=weights)
    again.set_epoch(1)
    assert again.draws() == sampler.draws()
    sampler.set_epoch(0)
    assert sampler.draws() != again.draws()
    # the per-rank slices of two processes partition the epoch; start_batch skips whole batches
    ranks = [ResumableSampler(48, 4, rank=r, world=2, seed=3, sizes=sizes, weights=weights) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    assert sorted(ranks[0].draws() + ranks[1].draws()) == sorted(again.epoch_draws())
    ranks[0].set_epoch(1, start_batch=2)
    assert list(ranks[0]) == [(i, 1, c) for i, c in again.epoch_draws()[0::2][8:]]
    # equal weights = the single-source order, unchanged
    plain, equal = ResumableSampler(48, 4, seed=3), ResumableSampler(48, 4, seed=3, sizes=sizes, weights=[2, 2])
    assert plain.order() == equal.order()
    # a repeated draw is augmented differently
    source = open_sources([str(tiny["shards"]), str(tiny["real"])], require_masks=False)
    data = StudentDataset(source, 3, SIZE, IMAGENET_MEAN, IMAGENET_STD, want_soft=True, warn=False)
    assert len(data) == 16 and data[(9, 0)]["soft"].shape == (3, *SIZE)  # a real image: one-hot soft labels
    assert any(not torch.equal(data[(i, 0, 0)]["image"], data[(i, 0, 1)]["image"]) for i in range(8, 12))


def test_two_sources_weighted_resume_exact_and_val_selection(tiny, capsys, tmp_path):
    """label-distill on shards + a real folder (weights 1,3), --val-every 1; killed after step 3 of 4
    (the last checkpoint is step 2, best.json may already hold step 3: it is read back and redone)."""
    import warnings

    data = [str(tiny["shards"]), str(tiny["real"])]
    kw = dict(data_weights=[1.0, 3.0], max_steps=4, save_every=2, val=str(tiny["val"]), val_every=1, hard_weight=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        full = train(_options(tiny["root"], "label-distill", data, "multi_full", **kw))
    soft_warnings = [str(w.message) for w in caught if "soft labels" in str(w.message)]
    assert len(soft_warnings) == 1 and "labelled folder" in soft_warnings[0]  # once, for the real folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = train(_options(tiny["root"], "label-distill", data, "multi_killed", **kw), stop_after=3)
        state = load_resume(first.run_dir / "last.pt")
        assert state["step"] == 2
        logs = []
        resumed = train(_options(tiny["root"], "label-distill", data, "multi_killed", **kw), log=logs.append)
    assert resumed.resumed_from == 2 and any(line.startswith("best so far") for line in logs)
    assert resumed.losses[:2] == full.losses[:2]
    assert resumed.losses[2:] == pytest.approx(full.losses[2:], rel=1e-5, abs=1e-6)
    assert (resumed.best_step, resumed.best_miou) == (full.best_step, pytest.approx(full.best_miou, abs=1e-6))

    # best.json holds the step with the highest val mIoU of the log; eval (default: best) re-scores it
    run = full.run_dir
    best = json.loads((run / "best.json").read_text())
    rows = [line.split(",") for line in (run / "log.csv").read_text().splitlines()]
    assert rows[0][-1] == "val_miou"
    val = {int(r[0]): float(r[-1]) for r in rows[1:]}
    assert sorted(val) == [1, 2, 3, 4] and best["step"] == max(val, key=lambda s: (val[s], -s))
    assert best["miou"] == pytest.approx(val[best["step"]], abs=1e-5) and best["miou"] == full.best_miou
    code, out, err = _cli(["eval", "--checkpoint", str(run), "--data", str(tiny["val"]), "--out", str(tmp_path / "e")],
                          capsys)
    assert code == 0, err
    assert "best.safetensors" in out and float(out.split("mIoU: ")[1].split()[0]) == pytest.approx(best["miou"], abs=1e-4)
    assert json.loads((tmp_path / "e" / "scores.json").read_text())["weights"].endswith("best.safetensors")
    code, out, err = _cli(["eval", "--checkpoint", str(run), "--data", str(tiny["val"]), "--out", str(tmp_path / "e"),
                           "--weights", "last"], capsys)
    assert code == 0 and float(out.split("mIoU: ")[1].split()[0]) == pytest.approx(full.val_miou, abs=1e-4)
    # --init RUN_DIR starts from the best weights
    from labelgen.student.models import create_student, load_matching

    assert load_matching(create_student("unet", ENCODER, 3), run)["path"].endswith("best.safetensors")
    # a run without selection: --weights best is a one-line error, the default falls back to the last weights
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("student_config.json", "model.safetensors"):
        (bare / name).write_bytes((run / name).read_bytes())
    code, out, err = _cli(["export", "--checkpoint", str(bare), "--onnx", str(tmp_path / "b.onnx"), "--weights", "best"],
                          capsys)
    assert code == 2 and err.count("\n") == 1 and "no best.safetensors" in err
    code, out, err = _cli(["predict", "--checkpoint", str(bare), "--images", str(tiny["val"] / "images"),
                           "--out", str(tmp_path / "p")], capsys)
    assert code == 0 and "model.safetensors (last step)" in out


def test_sources_must_share_classes_and_weights_must_fit(tiny, capsys, tmp_path):
    from labelgen.data.classes import ClassList

    other = make_folder(tmp_path / "other", 4, SIZE, split="train")
    ClassList.from_names(["background", "shirt", "disc"]).save(tmp_path / "other" / "classes.json")
    base = ["train", "--mode", "label-distill", "--out", str(tmp_path / "x"), "--data", str(tiny["shards"])]
    for extra, message in [(["--data", str(other)], "differ from"),
                           (["--data", str(tiny["real"]), "--data-weights", "1,2,3"], "3 value(s) for 2"),
                           (["--data", str(tiny["real"]), "--data-weights", "1,x"], "comma-separated"),
                           (["--val-every", "2"], "--val-every needs --val"),
                           (["--val", str(other)], "--val classes")]:
        code, out, err = _cli(base + extra, capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


# ------------------------------------------------------------------ safe resume state
def test_train_refuses_a_crafted_resume_file(tiny, tmp_path, plant_payload, capsys):
    """A RUN/last.pt that needs unpickling is refused with one line; its payload never runs."""
    marker = tmp_path / "marker"
    plant_payload(tmp_path / "run" / "last.pt", marker)
    code, _, err = _cli(["train", "--mode", "supervised", "--data", str(tiny["real"]), "--out", str(tmp_path / "run"),
                         "--encoder", ENCODER, "--image-size", "32x32", "--max-steps", "1", "--no-progress"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "last.pt" in lines[0], err
    assert not marker.exists()


def test_kill_9_keeps_log_and_leaves_no_temp_files(tiny, tmp_path):
    """After kill -9 log.csv keeps its header and every row up to the checkpoint; the resumed run
    cuts it back to the checkpoint, removes the killed save's temp file and refuses a second run."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "labelgen.student.cli", "train", "--mode", "supervised", "--data", str(tiny["real"]),
           "--out", str(out), "--encoder", ENCODER, "--image-size", "32x32", "--batch-size", "2",
           "--max-steps", "100000", "--save-every", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "last.pt").is_file() and load_resume(out / "last.pt")["step"] >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2 and f"in use by pid {proc.pid}" in second.stderr, second.stderr[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    k = load_resume(out / "last.pt")["step"]
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,total,")
    logged = [int(r.split(",")[0]) for r in rows[1:]]
    assert logged[:k] == list(range(1, k + 1))  # nothing before the checkpoint was lost in a buffer
    (out / ".last.pt.x1y2z3.tmp").write_bytes(b"\0" * 1000)  # a save the kill interrupted
    result = train(TrainOptions(mode="supervised", data=str(tiny["real"]), out=str(out), encoder=ENCODER,
                                image_size=(32, 32), batch_size=2, max_steps=k + 1, save_every=2, progress=False))
    assert result.resumed_from == k and not list(out.glob(".*.tmp"))
    assert [int(r.split(",")[0]) for r in (out / "log.csv").read_text().splitlines()[1:]] == list(range(1, k + 2))


# ------------------------------------------------------------------ round 2: the student relabels
def test_pseudo_label_round_two(tiny, supervised_run, tmp_path):
    from labelgen.data.io import list_images, read_image
    from labelgen.data.shards import ShardReader, ShardSample, ShardWriter
    from labelgen.errors import LabelgenError
    from labelgen.student.models import Student
    from labelgen.student.pseudo_label import pseudo_label_folder, student_probabilities

    reloaded = Student.from_pretrained(supervised_run[0])
    model, config = reloaded.net, reloaded.student_config
    images = tiny["real"] / "images"
    n = pseudo_label_folder(model, config, images, tmp_path / "r2", "sup", flip=True, progress=False)
    samples = list(ShardReader(tmp_path / "r2"))
    paths = list_images(images)
    assert n == len(samples) == len(paths) == 8
    for sample, path in zip(samples, paths):
        probs = student_probabilities(model, config, read_image(path), flip=True)
        np.testing.assert_array_equal(sample.soft, np.round(probs * 255).astype(np.uint8))
        np.testing.assert_array_equal(sample.mask, probs.argmax(0))
        assert sample.meta["source_image"] == path.name and sample.image.shape[:2] == tuple(config.image_size)
    # student + teacher: the teacher's soft labels of the same photos (matched by name) mixed in
    writer = ShardWriter(tmp_path / "teacher", config.class_list)
    uniform = np.full((len(CLASSES.names), *SIZE), 255 // len(CLASSES.names), np.uint8)
    writer.write_shard(0, [ShardSample(f"{j:09d}", read_image(p), np.zeros(SIZE, np.uint8), {"source_image": p.name},
                                       soft=uniform) for j, p in enumerate(paths)])
    writer.write_manifest({})
    pseudo_label_folder(model, config, images, tmp_path / "mixed", "sup", flip=False, progress=False,
                        teacher_shards=tmp_path / "teacher", teacher_weight=0.5)
    first = next(iter(ShardReader(tmp_path / "mixed")))
    expected = 0.5 * student_probabilities(model, config, read_image(paths[0])) + 0.5 / len(CLASSES.names)
    np.testing.assert_allclose(first.soft / 255.0, expected, atol=1 / 255 + 1e-6)
    # a fresh student distils from the relabelled photos
    result = train(_options(tiny["root"], "label-distill", [str(tmp_path / "r2"), str(tiny["real"])],
                            "round2", max_steps=2))
    assert result.steps == 2
    with pytest.raises(LabelgenError, match="already exists"):
        pseudo_label_folder(model, config, images, tmp_path / "r2", "sup")


# ------------------------------------------------------------------ the loader
def test_default_loader_workers_are_sized_from_the_machine(monkeypatch):
    from labelgen.student.data import default_loader_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cores, expected in ((2, 0), (3, 1), (8, 6), (16, 12), (64, 12)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert default_loader_workers() == expected, cores
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this 16-core node share it
    assert default_loader_workers() == 6
    assert TrainOptions.__dataclass_fields__["workers"].default_factory is default_loader_workers


def test_worker_processes_load_the_same_batches_and_persist(tiny, monkeypatch):
    """Decoding/augmentation in 2 persistent workers: the same losses as loading in the training process
    (augmentation is seeded per sample); 5 steps of 2 per epoch cross two epoch boundaries."""
    import labelgen.student.train as train_module

    loaders = []

    def spy(*args, **kwargs):
        loaders.append(make_loader(*args, **kwargs))
        return loaders[-1]

    from labelgen.student.data import make_loader

    monkeypatch.setattr(train_module, "make_loader", spy)
    inline = train(_options(tiny["root"], "label-distill", tiny["shards"], "ld_w0"))
    workers = train(_options(tiny["root"], "label-distill", tiny["shards"], "ld_w2", workers=2))
    assert inline.losses == workers.losses and len(workers.losses) == 5
    assert loaders[0].num_workers == 0 and not loaders[0].persistent_workers
    assert loaders[1].num_workers == 2 and loaders[1].persistent_workers and not loaders[1].pin_memory  # CPU run

"""Teacher features stored once (`labelgen features`) and read by `student train --features`: round trip against
Teacher.features, resume after SIGKILL, the same first loss as features computed in the loop, refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labelgen.data.shards import FeatureSet
from labelgen.errors import DataError, LabelgenError
from labelgen.student.data import open_sources
from labelgen.student.features import FeaturesConfig, StoredFeatures, write_features
from labelgen.student.testing import CLASSES, FakeGenerator, make_folder, make_shards
from labelgen.student.train import TrainOptions, train
from labelgen.teacher import Teacher
from teacher_fakes import REPO, kill_when_written, subprocess_env

SIZE = (32, 32)
torch.set_num_threads(1)  # the CI box is 2 shared cores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """8 synthetic samples (shards with recipes and soft labels), 8 labelled photos, a workspace on FakeGenerator
    (it encodes images) and that workspace's features of both, stored with 3 images per shard."""
    from labelgen.workspace import create_workspace

    root = tmp_path_factory.mktemp("stored")
    data = {"root": root, "shards": make_shards(root / "shards", 8, SIZE),
            "real": make_folder(root / "real", 8, SIZE, split="train", seed0=50)}
    data["ws"] = create_workspace(root / "ws", "labelgen.student.testing:FakeGenerator", list(CLASSES.names))
    data["feats"] = root / "feats"
    write_features(data["ws"].teacher(head=False), FeaturesConfig(data=[str(data["shards"]), str(data["real"])],
                                                                  shard_size=3), data["feats"], progress=False)
    return data


def _options(tiny, out: str, **kw) -> TrainOptions:
    base = dict(mode="feature-distill", data=str(tiny["shards"]), out=str(tiny["root"] / out), encoder="resnet18",
                image_size=SIZE, batch_size=4, max_steps=1, lr=3e-3, progress=False, warmup_steps=0, workers=0)
    return TrainOptions(**{**base, **kw})


class RecipeOnly(FakeGenerator):  # a GAN-like teacher: features recomputed from the shard recipes
    can_encode_images = False


def test_stored_features_equal_teacher_features(tiny, tmp_path):
    """Read back, every image's levels are Teacher.features of the item (float16 tolerance); the manifest names
    each level's generator index, channels, size and stride; images are matched by their pixels."""
    teacher = tiny["ws"].teacher(head=False)
    source = open_sources([str(tiny["shards"]), str(tiny["real"])], require_masks=False)
    stored = StoredFeatures(tiny["feats"], source, (teacher.generator_id, teacher.levels))
    for i in range(len(source)):
        expected = teacher.features(recipes=[source.metas[i]], images=[source.image(i)])
        got = stored.read(i)
        assert [g.dtype for g in got] == [torch.float16] * 3
        for e, g in zip(expected, got):
            torch.testing.assert_close(g.float(), e[0], rtol=1e-3, atol=1e-3)
    manifest = json.loads((tiny["feats"] / "manifest.json").read_text())
    assert manifest["format"] == "labelgen-features/1" and manifest["num_samples"] == 16
    assert len(manifest["shards"]) == 6 and manifest["config"]["teacher"]["levels"] == [0, 1, 2]
    assert manifest["config"]["levels"] == [
        {"name": "level0", "index": 0, "channels": 16, "size": [4, 4], "stride": 8},
        {"name": "level1", "index": 1, "channels": 8, "size": [8, 8], "stride": 4},
        {"name": "level2", "index": 2, "channels": 4, "size": [16, 16], "stride": 2}]
    assert FeatureSet(tiny["feats"]).nbytes == 2 * (16 * 16 + 8 * 64 + 4 * 256)
    # the photos alone, in another order of sources: the same features, found by content
    photos = open_sources(str(tiny["real"]), require_masks=False)
    alone = StoredFeatures(tiny["feats"], photos)
    for i in range(len(photos)):
        assert all(torch.equal(a, b) for a, b in zip(alone.read(i), stored.read(8 + i)))

    # a GAN-like teacher: from the recipes of the samples; photos have none (one line)
    gan = Teacher(RecipeOnly(32))
    write_features(gan, FeaturesConfig(data=[str(tiny["shards"])], shard_size=8), tmp_path / "gan", progress=False)
    shards = open_sources(str(tiny["shards"]))
    from_recipes = StoredFeatures(tmp_path / "gan", shards, (gan.generator_id, gan.levels))
    for i in range(len(shards)):
        for e, g in zip(gan.features(recipes=[shards.metas[i]]), from_recipes.read(i)):
            torch.testing.assert_close(g.float(), e[0], rtol=1e-3, atol=1e-3)
    with pytest.raises(LabelgenError, match="^stored features of images without a generator recipe needs features "
                                            "of real images, which the fake teacher cannot compute"):
        write_features(gan, FeaturesConfig(data=[str(tiny["real"])]), tmp_path / "gan-photos", progress=False)
    assert not (tmp_path / "gan-photos").exists()  # refused before anything was written


def _features_cli(ws, data: list[Path], out: Path, extra_env=None, shard_size: int = 2) -> subprocess.Popen:
    args = [sys.executable, "-m", "labelgen.cli", "features", "-w", str(ws.root), "--out", str(out),
            "--shard-size", str(shard_size), "--batch-size", "2", "--device", "cpu"]
    for d in data:
        args += ["--data", str(d)]
    return subprocess.Popen(args, env={**subprocess_env(), **(extra_env or {})}, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _contents(path: Path) -> dict[str, bytes]:
    """image key -> its stored bytes."""
    feature_set = FeatureSet(path)
    return {key: b"".join(a.tobytes() for a in feature_set.read(*where)) for key, where in feature_set.index().items()}


def test_resume_after_sigkill_gives_identical_features(tiny, tmp_path):
    """Killed after its second shard (of 8), the same command finishes the set: the same features as one
    uninterrupted run, no temp file; another --shard-size into the same folder is refused in one line."""
    from labelgen.workspace import create_workspace

    ws = create_workspace(tmp_path / "ws", "teacher_fakes:FakeDiffusion", ["background", "disc", "bar"])
    data = [tiny["shards"], tiny["real"]]
    write_features(ws.teacher(head=False), FeaturesConfig(data=[str(d) for d in data], shard_size=2, batch_size=2),
                   tmp_path / "reference", progress=False)
    out = tmp_path / "out"
    kill_when_written(_features_cli(ws, data, out, {"TEACHER_FAKES_DELAY": "0.15"}), out / "000001.json")
    finished = {p.name for p in out.glob("0*.json")}
    assert 0 < len(finished) < 8 and not (out / "manifest.json").exists()
    proc = _features_cli(ws, data, out)
    stdout, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert f"({8 - len(finished)} written now)" in stdout, stdout
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert _contents(out) == _contents(tmp_path / "reference") and len(_contents(out)) == 16

    proc = _features_cli(ws, data, out, shard_size=3)
    _, err = proc.communicate(timeout=180)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "shard_size differ" in lines[0], err


@pytest.mark.parametrize("mode", ["feature-distill", "dreamteacher"])
def test_stored_features_give_the_loss_of_features_computed_in_the_loop(tiny, mode):
    """A seeded run on stored features (no teacher loaded at all, DataLoader workers reading them) takes the first
    step the run with the teacher in the loop takes, within float16 rounding."""
    kw = dict(mode=mode, augment=False)  # the teacher in the loop sees the student's input: no colour jitter here
    in_loop = train(_options(tiny, f"loop-{mode}", teacher=str(tiny["ws"].root), **kw))
    stored = train(_options(tiny, f"stored-{mode}", features=str(tiny["feats"]), workers=2, **kw))
    assert stored.losses[0] == pytest.approx(in_loop.losses[0], rel=1e-4)
    assert (stored.run_dir / "regressor.safetensors").is_file()
    config = json.loads((stored.run_dir / "student_config.json").read_text())
    assert config["train"]["features"] == str(tiny["feats"])


def test_the_regressor_is_built_from_feature_info_before_the_teacher_runs(tiny):
    """Feature distillation sizes its regressor from Teacher.feature_info (channels and strides of the levels):
    when it logs the levels, the teacher has not been run once (it used to run on a probe image)."""
    from labelgen.student.distill import TeacherTargets

    runs, seen = [], []

    class Counted(TeacherTargets):
        def __call__(self, *args, **kwargs):
            runs.append(1)
            return super().__call__(*args, **kwargs)

    def log(*args, **kwargs):
        line = " ".join(map(str, args))
        if line.startswith("feature levels:"):
            seen.append((len(runs), line))

    result = train(_options(tiny, "from-info", teacher="unused"), teacher=Counted(Teacher(FakeGenerator(32))), log=log)
    assert [count for count, _ in seen] == [0] and len(runs) == result.steps == 1
    assert seen[0][1].startswith("feature levels: teacher (16, 4, 4) -> student stride 8 (4, 4), "
                                 "teacher (8, 8, 8) -> student stride 4 (8, 8)")


def test_features_of_another_teacher_or_missing_images_are_refused(tiny, tmp_path, capsys):
    from labelgen.student.cli import main
    from labelgen.workspace import create_workspace

    other = create_workspace(tmp_path / "other", "labelgen.student.testing:FakeGenerator", list(CLASSES.names),
                             feature_layers=[1, 2])
    with pytest.raises(LabelgenError, match=r"made by teacher .* \(levels \[0, 1, 2\]\), --teacher is .* "
                                            r"\(levels \[1, 2\]\); run `labelgen features` with this teacher"):
        train(_options(tiny, "other", teacher=str(other.root), features=str(tiny["feats"])))
    with pytest.raises(LabelgenError, match="made by teacher"):  # another generator (a Teacher given in code)
        from labelgen.student.distill import TeacherTargets

        train(_options(tiny, "other2", features=str(tiny["feats"])), teacher=TeacherTargets(Teacher(RecipeOnly(32))))

    only_shards = tmp_path / "only-shards"
    write_features(tiny["ws"].teacher(head=False), FeaturesConfig(data=[str(tiny["shards"])]), only_shards,
                   progress=False)
    base = ["train", "--mode", "dreamteacher", "--out", str(tmp_path / "x"), "--image-size", "32x32",
            "--max-steps", "1", "--no-progress", "--data", str(tiny["shards"])]
    for extra, message in [
        (["--data", str(tiny["real"]), "--features", str(only_shards)],
         f"no stored features for 8 of the 16 training images (first: {tiny['real'] / 'images' / '0000.png'})"),
        (["--mode", "supervised", "--features", str(only_shards)], "--features feeds teacher features to --mode"),
        (["--features", str(only_shards), "--feature-cache"], "--feature-cache keeps features computed in the loop"),
        (["--data", str(only_shards), "--teacher", str(tiny["ws"].root)],
         "a set of stored teacher features (labelgen features), not a shard set of samples"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            main(base + extra)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("warn", "  "))]
        assert stopped.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert message in lines[0], err
    assert not (tmp_path / "x" / "log.csv").exists()


def test_feature_set_refuses_a_foreign_or_truncated_member(tiny, tmp_path):
    """A member that is not features of the manifest's levels, or a shard cut short, is one line naming the shard."""
    import shutil

    from labelgen.data.shards import ShardWriter

    copy = tmp_path / "feats"
    shutil.copytree(tiny["feats"], copy)
    index = FeatureSet(copy).index()
    shard, offset = max(index.values())  # the last image of the last shard (number 5)
    with open(FeatureSet(copy).shards[shard], "r+b") as f:
        f.truncate(offset + 100)
    with pytest.raises(DataError, match=r"000005\.tar: truncated"):
        FeatureSet(copy).read(shard, offset)
    ShardWriter(copy).write_shard(5, encoded=[[("abc.features.f16", b"\0" * 10)]])
    with pytest.raises(DataError, match=r"000005\.tar: member abc\.features\.f16 \(10 bytes\) is not stored features"):
        FeatureSet(copy).index()

"""The CCP quality benchmark, tiny: every row of bench/ccp_quality.py runs end to end on the bundled
CCP excerpt with a tiny random DDPM teacher (numbers are meaningless; the plumbing is what is tested:
import -> teacher heads -> synthesis + pseudo-labels -> students with val selection -> test table)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labelgen.data.ccp import CCP8_CLASSES, import_ccp
from labelgen.data.shards import iter_shard
from labelgen.generators import create_generator

ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = {"sample_size": [24, 16], "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
             "layers_per_block": 1, "norm_num_groups": 4, "attention_head_dim": 8,
             "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}


def labelgen_cli(*args):
    subprocess.run([sys.executable, "-m", "labelgen.cli", *map(str, args)], check=True, capture_output=True,
                   timeout=300, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})


@pytest.fixture
def tiny_teacher(ccp_mini, tmp_path):
    ccp = tmp_path / "ccp"
    import_ccp(ccp_mini, ccp, (24, 16), limit=2, workers=1)
    import torch

    torch.manual_seed(0)
    create_generator("ddpm", unet_config=TINY_UNET, ddim_steps=2).save_pretrained(tmp_path / "generator")
    ws = tmp_path / "teacher"
    labelgen_cli("init", ws, "--generator", "ddpm", "--checkpoint", tmp_path / "generator",
                 "--classes", ",".join(CCP8_CLASSES.names), "--timesteps", "50")
    labelgen_cli("import", "-w", ws, "--images", ccp / "annotated-20" / "images", "--masks", ccp / "annotated-20" / "masks")
    labelgen_cli("train-heads", "-w", ws, "--epochs", "1")
    return ccp, ws


# ~9 of the suite's ~22 minutes in a fresh-clone CI (29 rows, each one or more CLI subprocesses): the benchmark's
# plumbing, not the product's; `make test-all` (and `pytest -m slow`) runs it, and run it after changing bench/
@pytest.mark.slow
def test_every_row_runs_and_the_table_is_written(tiny_teacher, tmp_path):
    ccp, ws = tiny_teacher
    results = tmp_path / "ccp_quality.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ccp_quality.py"), "--ccp", str(ccp), "--teacher", str(ws),
                           "--preset", "tiny", "--out", str(tmp_path / "run"), "--results", str(results)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(results.read_text())
    assert [r["name"] for r in rows] == [
        "supervised-20", "supervised-full", "teacher-pixel-mlp", "teacher-selected", "teacher-selected-cb",
        "teacher-selected-cb-tta", "teacher-conv", "teacher-selected-cb-flip", "teacher-selected-cb-flip-tta",
        "teacher-ensemble", "teacher-ensemble-tta", "label-distill", "label-distill-ens", "label-distill-r2",
        "label-distill-strong-aug", "label-distill-cons", "label-distill-uw", "label-distill-ema", "label-distill-2x",
        "label-distill-8x-samples", "label-distill-long", "label-distill-long-all", "label-distill-long-all-2x", "label-distill-long-all-3x",
        "label-distill-long-all-tta", "label-distill-long-all-3x-tta", "label-distill-long-all-2x-r2", "dreamteacher", "finetuned-20"]
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        assert 0.0 <= row["miou"] <= 1.0 and set(row["per_class"]) == set(CCP8_CLASSES.names)
        assert row["device"] and row["seconds"] >= 0 and row["command"]
    assert "| label-distill |" in proc.stdout and "**" in proc.stdout
    # the distillation data really was made: synthetic samples and pseudo-labelled unlabeled photos, soft labels
    synthetic = json.loads((tmp_path / "run" / "data" / "synthetic" / "manifest.json").read_text())
    pseudo = json.loads((tmp_path / "run" / "data" / "pseudo" / "manifest.json").read_text())
    assert synthetic["num_samples"] == 4 and pseudo["num_samples"] == 1  # the tiny preset's unlabeled_limit
    assert synthetic["config"]["soft_labels"] == "uint8"
    # its cost is recorded beside the distilled rows (and kept for a resumed run)
    timing = json.loads((tmp_path / "run" / "data" / "seconds.json").read_text())
    assert timing["synthetic"] > 0 and timing["pseudo"] > 0
    for name in ("label-distill", "label-distill-r2", "label-distill-strong-aug", "label-distill-cons", "label-distill-uw",
                 "label-distill-ema", "label-distill-2x", "dreamteacher"):
        assert by_name[name]["data_seconds"] == round(timing["synthetic"] + timing["pseudo"], 1)
    # the student levers: label-distill's command + one option each, on the same data
    base = by_name["label-distill"]["command"]
    for name, option in (("label-distill-strong-aug", "--augment-policy strong"),
                         ("label-distill-cons", "--consistency-weight 1"),
                         ("label-distill-uw", "--uncertainty-weighting"),
                         ("label-distill-ema", "--ema-decay 0.99")):
        expected = base.replace("students/label-distill ", f"students/{name} ").replace("--tau 4", f"--tau 4 {option}")
        assert by_name[name]["command"] == expected
    # -ens: label-distill's command on data of its own, labelled by the ensemble's heads (flip TTA on the synthetic
    # samples too): as many samples and the same photos
    assert by_name["label-distill-ens"]["command"] == base.replace(
        "students/label-distill ", "students/label-distill-ens ").replace(
        "data/synthetic ", "data/synthetic-ensemble ").replace("data/pseudo ", "data/pseudo-ensemble ")
    for part, like in (("synthetic-ensemble", "synthetic"), ("pseudo-ensemble", "pseudo")):
        manifest = json.loads((tmp_path / "run" / "data" / part / "manifest.json").read_text())
        assert manifest["num_samples"] == json.loads((tmp_path / "run" / "data" / like / "manifest.json").read_text())[
            "num_samples"]
        assert manifest["config"]["head_type"] == "pixel-mlp+conv"
        assert manifest["config"]["tta"] == ("all" if part == "synthetic-ensemble" else "real")
    assert by_name["label-distill-ens"]["data_seconds"] == round(timing["synthetic-ensemble"] + timing["pseudo-ensemble"], 1)
    # the 2x student: the same command at twice the photos' size; scored like the others at the photos' size
    assert "--image-size 96x64 " in base
    assert by_name["label-distill-2x"]["command"] == base.replace(
        "students/label-distill ", "students/label-distill-2x ").replace("--image-size 96x64 ", "--image-size 192x128 ")
    config_2x = json.loads((tmp_path / "run" / "students" / "label-distill-2x" / "student_config.json").read_text())
    assert config_2x["image_size"] == [192, 128]
    # 8x the synthetic samples: label-distill's own + 7x as many from seeds of their own, beside the same photos
    run_data = tmp_path / "run" / "data"
    more = json.loads((run_data / "synthetic-more" / "manifest.json").read_text())
    assert more["num_samples"] == 7 * synthetic["num_samples"]
    seeds = {name: {sample.meta["seed"] for shard in sorted((run_data / name).glob("*.tar"))
                    for sample in iter_shard(shard, decode=False)} for name in ("synthetic", "synthetic-more")}
    assert len(seeds["synthetic"]) == 4 and len(seeds["synthetic-more"]) == 28
    assert not seeds["synthetic"] & seeds["synthetic-more"]
    assert by_name["label-distill-8x-samples"]["command"] == base.replace(
        "students/label-distill ", "students/label-distill-8x-samples ").replace(
        f"--data {run_data / 'synthetic'} ", f"--data {run_data / 'synthetic'} --data {run_data / 'synthetic-more'} ").replace(
        "--data-weights 1,1,", "--data-weights 1,1,1,")
    assert by_name["label-distill-8x-samples"]["trained_on"].startswith("32 DDIM-2 samples + 1 pseudo-labelled photos")
    assert by_name["label-distill-8x-samples"]["data_seconds"] == round(
        timing["synthetic"] + timing["pseudo"] + timing["synthetic-more"], 1)
    # the long rows: label-distill's command with 4x the steps; -all on every unlabeled photo (the other rows: the first 1)
    long = by_name["label-distill-long"]["command"]
    assert long == base.replace("students/label-distill ", "students/label-distill-long ").replace(
        "--max-steps 3 ", "--max-steps 12 ")
    assert by_name["label-distill-long-all"]["command"] == long.replace(
        "students/label-distill-long ", "students/label-distill-long-all ").replace("data/pseudo ", "data/pseudo-all ")
    pseudo_all = json.loads((tmp_path / "run" / "data" / "pseudo-all" / "manifest.json").read_text())
    assert pseudo_all["num_samples"] == len(list((ccp / "unlabeled" / "images").iterdir())) == 2
    assert by_name["label-distill-long-all"]["data_seconds"] == round(timing["synthetic"] + timing["pseudo-all"], 1)
    # the two levers combined: label-distill-long-all's command at twice the photos' size
    assert by_name["label-distill-long-all-2x"]["command"] == by_name["label-distill-long-all"]["command"].replace(
        "students/label-distill-long-all ", "students/label-distill-long-all-2x ").replace(
        "--image-size 96x64 ", "--image-size 192x128 ")
    # and at three times it (its own student folder, trained at that size)
    assert by_name["label-distill-long-all-3x"]["command"] == by_name["label-distill-long-all"]["command"].replace(
        "students/label-distill-long-all ", "students/label-distill-long-all-3x ").replace(
        "--image-size 96x64 ", "--image-size 288x192 ")
    config_3x = json.loads((tmp_path / "run" / "students" / "label-distill-long-all-3x" / "student_config.json").read_text())
    assert config_3x["image_size"] == [288, 192]
    # the same checkpoints scored with flip TTA: on val without it (= the val score that chose the checkpoint) and
    # with it, then on test with it, into folders of their own
    for base in ("label-distill-long-all", "label-distill-long-all-3x"):
        tta = by_name[f"{base}-tta"]
        assert tta["tta_of"] == base and tta["tta_of_test_miou"] == by_name[base]["miou"]
        assert tta["command"].endswith("--flip") and f"students/{base} " in tta["command"]
        best = json.loads((tmp_path / "run" / "students" / base / "best.json").read_text())
        assert tta["val_miou"]["no_tta"] == pytest.approx(best["miou"], abs=1e-6)
        for folder, flip in (("val", False), ("val-tta", True), ("test-tta", True)):
            written = json.loads((tmp_path / "run" / "students" / base / folder / "scores.json").read_text())
            assert written["flip_tta"] is flip
        assert tta["miou"] == written["miou"]
    # its round 2: that student + the teacher relabel every unlabeled photo; a fresh student trained the same way
    r2_all = json.loads((tmp_path / "run" / "data" / "pseudo-all-r2" / "manifest.json").read_text())
    assert r2_all["num_samples"] == 2 and r2_all["config"]["relabelled_by"].startswith("label-distill-long-all-2x")
    assert r2_all["config"]["teacher_weight"] == 0.5
    assert r2_all["config"]["teacher_shards"] == str((tmp_path / "run" / "data" / "pseudo-all").resolve())
    assert by_name["label-distill-long-all-2x-r2"]["command"] == by_name["label-distill-long-all-2x"]["command"].replace(
        "students/label-distill-long-all-2x ", "students/label-distill-long-all-2x-r2 ").replace(
        "data/pseudo-all ", "data/pseudo-all-r2 ")
    assert by_name["label-distill-long-all-2x-r2"]["data_seconds"] == by_name["label-distill-long-all"]["data_seconds"]
    # finetuned-20 starts from the distilled student with the best val mIoU, at that student's size
    students = tmp_path / "run" / "students"
    val = {name: json.loads((students / name / "best.json").read_text())["miou"]
           for name in ("label-distill", "label-distill-r2", "dreamteacher", "label-distill-strong-aug",
                        "label-distill-cons", "label-distill-uw", "label-distill-ema", "label-distill-2x", "label-distill-8x-samples",
                        "label-distill-long", "label-distill-long-all",
                        "label-distill-long-all-2x", "label-distill-long-all-2x-r2", "label-distill-long-all-3x",
                        "label-distill-ens")}
    chosen = by_name["finetuned-20"]["fine_tuned"]
    assert val[chosen] == max(val.values()) == by_name["finetuned-20"]["fine_tuned_val_miou"]
    assert f"--init {students / chosen}" in by_name["finetuned-20"]["command"]
    assert json.loads((students / "finetuned-20" / "student_config.json").read_text())["image_size"] == \
        json.loads((students / chosen / "student_config.json").read_text())["image_size"]
    # the ensemble reuses the two trained heads (same files, nothing retrained) and the Teacher combines them
    run = tmp_path / "run"
    ensemble = run / "ws-selected-ensemble-cb0.5-flip" / "heads"
    for own, reused in ((ensemble, run / "ws-selected-pixel-mlp-cb0.5-flip" / "heads"),
                        (ensemble / "conv", run / "ws-selected-conv-cb0.5" / "heads")):
        assert (own / "head.safetensors").read_bytes() == (reused / "head.safetensors").read_bytes()
    assert by_name["teacher-ensemble"]["heads"] == "pixel-mlp+conv" and "--type conv" in by_name["teacher-ensemble"]["command"]
    # the same heads with flip TTA: the same commands, scored with --flip
    assert by_name["teacher-ensemble-tta"]["heads"] == "pixel-mlp+conv"
    assert by_name["teacher-ensemble-tta"]["command"] == by_name["teacher-ensemble"]["command"] + " --flip"
    # the levers: features chosen on val (stored in the workspace), class balance, flip TTA, round 2
    sweep = json.loads((tmp_path / "run" / "ws-selected" / "feature_sweep.json").read_text())
    assert sweep["scored_on"].startswith("--val") and sweep["candidates"]
    assert "--class-balance 0.5" in by_name["teacher-selected-cb"]["command"]
    assert "--augment none" in by_name["teacher-selected-cb"]["command"]
    assert "--augment flip" in by_name["teacher-selected-cb-flip"]["command"]
    assert by_name["teacher-selected-cb-flip-tta"]["command"].endswith("--flip")
    flip_log = json.loads((run / "ws-selected-pixel-mlp-cb0.5-flip" / "heads" / "train_log.json").read_text())
    plain_log = json.loads((run / "ws-selected-pixel-mlp-cb0.5" / "heads" / "train_log.json").read_text())
    assert flip_log["train"]["augment"] == "flip" and plain_log["train"]["augment"] == "none"
    assert flip_log["steps"] == 2 * plain_log["steps"]  # each annotation and its mirror image
    assert by_name["teacher-selected-cb-tta"]["command"].endswith("--flip")
    relabelled = json.loads((tmp_path / "run" / "data" / "pseudo-r2" / "manifest.json").read_text())
    assert relabelled["num_samples"] == 1 and relabelled["config"]["relabelled_by"].startswith("label-distill")
    # a second invocation resumes: every row is read back, nothing retrained
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "ccp_quality.py"), "--ccp", str(ccp), "--teacher", str(ws),
                            "--preset", "tiny", "--out", str(tmp_path / "run"), "--results", str(results)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(results.read_text()) == rows
    # --rows takes row names too; an unknown one is refused naming the choices
    one = subprocess.run([sys.executable, str(ROOT / "bench" / "ccp_quality.py"), "--ccp", str(ccp), "--teacher", str(ws),
                          "--preset", "tiny", "--out", str(tmp_path / "run"), "--results", str(results),
                          "--rows", "teacher-ensemble,label-distill-uw"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and json.loads(results.read_text()) == rows
    bad = subprocess.run([sys.executable, str(ROOT / "bench" / "ccp_quality.py"), "--ccp", str(ccp), "--preset", "tiny",
                          "--out", str(tmp_path / "run"), "--results", str(results), "--rows", "teacher-magic"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "teacher-ensemble" in bad.stderr


def test_the_runner_builds_every_recorded_command():
    """Each row's command in bench/results/ccp_quality.json is what the table and the runner build for that row today,
    given the run's folders (read from the recorded command), preset, --threads 2 and --seed 0; nothing runs."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ccp_quality

    recorded = json.loads((ROOT / "bench" / "results" / "ccp_quality.json").read_text())
    names = [r["name"] for r in recorded]
    assert names == [n for n in ccp_quality.ROW_ORDER if n in names]  # every recorded row is in the table, in order
    ccp = Path(next(r for r in recorded if r["name"] == "supervised-20")["command"].split("--val ")[1].split()[0]).parent
    for row in recorded:
        out = Path(re.search(r"(/\S+?)/(?:students|ws-)", row["command"]).group(1))
        runner = ccp_quality.Runner(ccp, None, out, ccp_quality.PRESETS[row["preset"]], threads=2, seed=0)
        assert runner.command(row["name"], init=row.get("fine_tuned")) == row["command"], row["name"]
        assert not out.exists()  # built, not run


def test_noise_seed_probe_scores_the_teachers_own_path(tiny_teacher, tmp_path):
    """bench/noise_seed_probe.py: its seed-0, own-heads ensemble row is what `evaluate_teacher --flip` scores (the
    teacher's one path); every head set is scored at 1..K TTA seeds, for the own heads and for heads trained at K."""
    sys.path.insert(0, str(ROOT / "bench"))
    from noise_seed_probe import probe

    from labelgen.training.evaluate_teacher import evaluate_teacher
    from labelgen.workspace import Workspace

    ccp, ws = tiny_teacher
    labelgen_cli("train-heads", "-w", ws, "--type", "conv", "--epochs", "1")
    report = probe(ws, ccp / "val", seeds=2, log=lambda *_: None)
    rows = {(r["heads"], r["trained_on_seeds"], r["tta_seeds"]): r["miou"] for r in report["rows"]}
    assert set(rows) == {(h, t, k) for h in ("pixel-mlp", "conv", "pixel-mlp+conv") for t in (1, 2) for k in (1, 2)}
    assert all(0 <= m <= 1 for m in rows.values())
    own = evaluate_teacher(Workspace(ws).teacher(), ccp / "val", progress=False, flip=True)
    assert report["images"] == own["images"] > 0
    assert rows[("pixel-mlp+conv", 1, 1)] == pytest.approx(own["miou"], abs=1e-9)
    # the probe's other seeds reach the mirror images too (Teacher.flipped_features(seed=))
    import numpy as np
    import torch

    teacher = Workspace(ws).teacher(head=False)
    image = np.random.default_rng(0).integers(0, 256, (*teacher.resolution, 3), dtype=np.uint8)
    mirror = np.ascontiguousarray(image[:, ::-1])
    for a, b in zip(teacher.flipped_features([image], seed=1), teacher.features(images=[mirror], seed=1), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not all(torch.equal(a, b) for a, b in zip(teacher.flipped_features([image], seed=1),
                                                     teacher.flipped_features([image], seed=0)))

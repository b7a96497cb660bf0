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


# ~9 of the suite's ~22 minutes in a fresh-clone CI (34 rows, each one or more CLI subprocesses): the benchmark's
# plumbing, not the product's; `make test-all` (and `pytest -m slow`) runs it, and run it after changing bench/
@pytest.mark.slow
def test_every_row_runs_and_the_table_is_written(tiny_teacher, tmp_path):
    ccp, ws = tiny_teacher
    results = tmp_path / "ccp_quality.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ccp_quality.py"), "--ccp", str(ccp), "--teacher", str(ws),
                           "--preset", "tiny", "--out", str(tmp_path / "run"), "--results", str(results)],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(results.read_text())
    assert [r["name"] for r in rows] == [
        "supervised-20", "supervised-full", "teacher-pixel-mlp", "teacher-selected", "teacher-selected-cb",
        "teacher-selected-cb-tta", "teacher-conv", "teacher-selected-cb-flip", "teacher-selected-cb-flip-tta",
        "teacher-ensemble", "teacher-ensemble-tta", "label-distill", "label-distill-ens", "label-distill-r2",
        "label-distill-strong-aug", "label-distill-cons", "label-distill-uw", "label-distill-ema", "label-distill-2x",
        "label-distill-8x-samples", "label-distill-long", "label-distill-long-all", "label-distill-long-all-2x", "label-distill-long-all-3x",
        "label-distill-long-all-tta", "label-distill-long-all-3x-tta", "label-distill-long-all-2x-r2", "dreamteacher",
        "feature-distill", "label-distill-fd", "supervised-20-fd", "dreamteacher-stored", "label-distill-convnext",
        "finetuned-20"]
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        if row["name"] != "feature-distill":  # pretraining only: nothing scored
            assert 0.0 <= row["miou"] <= 1.0 and set(row["per_class"]) == set(CCP8_CLASSES.names)
        assert row["device"] and row["seconds"] >= 0 and row["command"] and "miou_seeds" not in row
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
    # DreamTeacher's recipe: the teacher's features stored once (by label-distill's teacher, over every unlabeled
    # photo, the synthetic samples and annotated-20), read by the pretraining and by the one-stage mix
    features = json.loads((run_data / "features" / "manifest.json").read_text())
    assert features["format"] == "labelgen-features/1" and features["num_samples"] == 2 + 4 + len(
        list((ccp / "annotated-20" / "images").iterdir()))
    assert features["config"]["data"][1]["path"] == str((run_data / "synthetic").resolve())
    fd = by_name["feature-distill"]
    assert fd["miou"] is None and fd["per_class"] is None and "--features " in fd["command"]
    assert fd["pretrain"]["steps"] == 3 and fd["pretrain"]["feat_mse_first"] > 0 and fd["pretrain"]["feat_mse_last"] > 0
    assert fd["data_seconds"] == round(timing["synthetic"] + timing["features"], 1)
    assert "| feature-distill |" in proc.stdout and "n/a (pretraining: feature MSE" in proc.stdout
    for name, like in (("label-distill-fd", "label-distill"), ("supervised-20-fd", "supervised-20")):
        assert by_name[name]["command"] == by_name[like]["command"].replace(
            f"students/{like} ", f"students/{name} ") + f" --init {students / 'feature-distill'}"
        init = json.loads((students / name / "student_config.json").read_text())["train"]["init"]
        assert init == str(students / "feature-distill")
    stored = by_name["dreamteacher-stored"]
    assert f"--features {run_data / 'features'} " in stored["command"] and "--max-steps 6 " in stored["command"]
    assert stored["data_seconds"] == round(timing["synthetic"] + timing["pseudo"] + timing["features"], 1)
    convnext = json.loads((students / "label-distill-convnext" / "student_config.json").read_text())
    assert (convnext["arch"], convnext["encoder"]) == ("upernet", "tu-convnext_atto")
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
    # --seeds 2: label-distill-fd again at seed 1, from feature-distill's seed-1 run (made for it); the row reports both
    two = subprocess.run([sys.executable, str(ROOT / "bench" / "ccp_quality.py"), "--ccp", str(ccp), "--teacher", str(ws),
                          "--preset", "tiny", "--out", str(tmp_path / "run"), "--results", str(results),
                          "--rows", "label-distill-fd", "--seeds", "2"], capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    seeded = {r["name"]: r for r in json.loads(results.read_text())}
    seed1 = json.loads((tmp_path / "run" / "rows" / "label-distill-fd-seed1.json").read_text())
    assert seed1["seed"] == 1 and f"--init {students / 'feature-distill-seed1'}" in seed1["command"]
    assert seeded["label-distill-fd"]["miou_seeds"] == [by_name["label-distill-fd"]["miou"], seed1["miou"]]
    assert seeded["label-distill-fd"]["miou"] == pytest.approx((seed1["miou"] + by_name["label-distill-fd"]["miou"]) / 2)
    assert seeded["feature-distill"]["seeds"] == [0, 1] and len(seeded["feature-distill"]["pretrain_seeds"]) == 2
    assert (students / "feature-distill-seed1" / "model.safetensors").is_file()
    assert seeded["label-distill"] == by_name["label-distill"]  # the rows not named: as they were
    assert "| label-distill-fd |" in two.stdout and " ± " in two.stdout


# ~55 s on the shared 2-core CPU (tune-features, four head trainings, two TTA evaluations): the bench's plumbing
@pytest.mark.slow
def test_a_teacher_row_runs_at_several_head_seeds(tiny_teacher, tmp_path):
    """--seeds 2 on the best teacher (the ensemble with flip TTA): head seed 1 trains both heads with `train-heads
    --seed 1` in workspaces of their own (-seed1, copies of the same ws-selected: one feature choice), the ensemble
    combines those; its record is rows/<name>-seed1.json and the row reports both seeds."""
    ccp, ws = tiny_teacher
    results, run = tmp_path / "ccp_quality.json", tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ccp_quality.py"), "--ccp", str(ccp), "--teacher", str(ws),
                           "--preset", "tiny", "--out", str(run), "--results", str(results),
                           "--rows", "teacher-ensemble-tta", "--seeds", "2"], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [row] = json.loads(results.read_text())
    seed0 = json.loads((run / "rows" / "teacher-ensemble-tta.json").read_text())
    seed1 = json.loads((run / "rows" / "teacher-ensemble-tta-seed1.json").read_text())
    assert row["name"] == "teacher-ensemble-tta" and row["seeds"] == [0, 1] and "seed" not in row
    assert row["miou_seeds"] == [seed0["miou"], seed1["miou"]]
    assert row["miou"] == pytest.approx((seed0["miou"] + seed1["miou"]) / 2) and row["miou_std"] >= 0
    assert row["command"] == seed0["command"] and " ± " in proc.stdout
    assert seed1["seed"] == 1 and "seed" not in seed0 and seed1["heads"] == "pixel-mlp+conv"
    assert seed1["command"] == seed0["command"].replace("--seed 0 ", "--seed 1 ").replace(
        "ws-selected-pixel-mlp-cb0.5-flip ", "ws-selected-pixel-mlp-cb0.5-flip-seed1 ").replace(
        "ws-selected-conv-cb0.5 ", "ws-selected-conv-cb0.5-seed1 ")
    for seed, suffix in ((0, ""), (1, "-seed1")):
        ensemble = run / f"ws-selected-ensemble-cb0.5-flip{suffix}" / "heads"
        for own, reused in ((ensemble, run / f"ws-selected-pixel-mlp-cb0.5-flip{suffix}" / "heads"),
                            (ensemble / "conv", run / f"ws-selected-conv-cb0.5{suffix}" / "heads")):
            assert (own / "head.safetensors").read_bytes() == (reused / "head.safetensors").read_bytes()
            assert json.loads((reused / "train_log.json").read_text())["train"]["seed"] == seed
    for folder in ("ws-selected-pixel-mlp-cb0.5-flip", "ws-selected-conv-cb0.5"):  # other heads, from the same features
        assert (run / folder / "heads" / "head.safetensors").read_bytes() != (
            run / f"{folder}-seed1" / "heads" / "head.safetensors").read_bytes()
        assert json.loads((run / folder / "workspace.json").read_text()) == json.loads(
            (run / f"{folder}-seed1" / "workspace.json").read_text())
    assert not list((run / "rows").glob("teacher-selected-cb-flip*"))  # the reused heads' own rows were not asked for


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


def test_the_runner_builds_the_feature_distillation_rows_commands():
    """The DreamTeacher rows on the cpu preset: feature-distill pretrains on the stored features of every unlabeled
    photo + the synthetic samples (no val, no class balance: it trains no segmentation head), the -fd rows are
    label-distill's / supervised-20's commands from its weights, dreamteacher-stored mixes both losses on
    label-distill's data for as many steps as the two stages, -convnext is label-distill with the ConvNeXt student;
    another seed has its own folder and starts from the pretraining of that seed. Nothing runs."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ccp_quality

    ccp, out = Path("/data/ccp96"), Path("/runs/ccp")
    runner = ccp_quality.Runner(ccp, None, out, ccp_quality.PRESETS["cpu"], threads=2, seed=0)
    assert runner.command("feature-distill") == (
        "labelgen.student.cli train --mode feature-distill --out /runs/ccp/students/feature-distill --max-steps 600 "
        "--batch-size 8 --image-size 96x64 --arch unet --encoder resnet18 --seed 0 --threads 2 --lr 0.001 "
        "--features /runs/ccp/data/features --data /data/ccp96/unlabeled --data /runs/ccp/data/synthetic "
        "--data-weights 1,1")
    base = runner.command("label-distill")
    assert base == ("labelgen.student.cli train --mode label-distill --out /runs/ccp/students/label-distill "
                    "--val /data/ccp96/val --val-every 100 --max-steps 800 --batch-size 8 --image-size 96x64 "
                    "--arch unet --encoder resnet18 --seed 0 --threads 2 --lr 0.001 --class-balance 0.5 --tau 4 "
                    "--data /runs/ccp/data/synthetic --data /runs/ccp/data/pseudo --data /data/ccp96/annotated-20 "
                    "--data-weights 1,1,20")
    assert runner.command("label-distill-fd") == base.replace(
        "students/label-distill ", "students/label-distill-fd ") + " --init /runs/ccp/students/feature-distill"
    assert runner.command("supervised-20-fd") == runner.command("supervised-20").replace(
        "students/supervised-20 ", "students/supervised-20-fd ") + " --init /runs/ccp/students/feature-distill"
    assert runner.command("dreamteacher-stored") == base.replace(
        "--mode label-distill --out /runs/ccp/students/label-distill ",
        "--mode dreamteacher --out /runs/ccp/students/dreamteacher-stored ").replace(
        "--max-steps 800 ", "--max-steps 1400 ").replace(
        "--tau 4 ", "--tau 4 --features /runs/ccp/data/features ")
    assert runner.command("label-distill-convnext") == base.replace(
        "students/label-distill ", "students/label-distill-convnext ").replace(
        "--arch unet --encoder resnet18 ", "--arch upernet --encoder tu-convnext_atto ")
    # another seed: its own run folder, and the pretraining of the same seed
    seed1 = " ".join(runner.student_cmd(ccp_quality.ROW["label-distill-fd"], seed=1)[2:])
    assert seed1 == runner.command("label-distill-fd").replace(
        "students/label-distill-fd ", "students/label-distill-fd-seed1 ").replace("--seed 0 ", "--seed 1 ").replace(
        "students/feature-distill", "students/feature-distill-seed1")
    # the features are made once, by the label-distill teacher, over what feature-distill and label-distill read
    part = ccp_quality.PARTS["features"]
    assert part.heads == ccp_quality.BEST and {"unlabeled", "synthetic"} <= set(part.of)
    assert set(ccp_quality.ROW["dreamteacher-stored"].data) <= set(part.of) | {"pseudo"}
    # finetuned-20 still chooses among the students distilled from scratch with its own architecture
    assert not {"feature-distill", "label-distill-fd", "dreamteacher-stored", "label-distill-convnext"} & set(
        ccp_quality.DISTILLED)
    assert not out.exists()


def _fake_record(name, miou, per_class, seconds, **extra):
    return {"name": name, "trained_on": "x", "miou": miou, "per_class": per_class, "pixel_accuracy": miou and miou + 0.5,
            "device": "CPU", "seconds": seconds, "command": f"train --seed {extra.get('seed', 0)}", **extra}


def test_a_row_run_at_several_seeds_reports_their_mean_spread_and_list(tmp_path):
    """Per-seed records in rows/ (the runner's seed in <name>.json, seed k in <name>-seed<k>.json) are reported as
    one row: miou the mean, miou_std the sample standard deviation, miou_seeds the list, per-class IoU the mean (a
    class without IoU in one seed: the others'); one seed keeps its record as it is; the table prints mean ± std (n)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ccp_quality

    runner = ccp_quality.Runner(tmp_path / "ccp", None, tmp_path, ccp_quality.PRESETS["tiny"], threads=1, seed=0)
    rows = tmp_path / "rows"
    rows.mkdir()
    records = [_fake_record("label-distill", 0.40, {"skin": 0.2, "dress": None}, 10.0),
               _fake_record("label-distill", 0.44, {"skin": 0.4, "dress": 0.1}, 20.0, seed=1),
               _fake_record("label-distill", 0.45, {"skin": 0.3, "dress": 0.3}, 30.0, seed=2)]
    for record, file in zip(records, ("label-distill.json", "label-distill-seed1.json", "label-distill-seed2.json")):
        (rows / file).write_text(json.dumps(record))
    single = _fake_record("label-distill-long", 0.5, {"skin": 0.5, "dress": 0.5}, 5.0)
    (rows / "label-distill-long.json").write_text(json.dumps(single))
    row = runner.row_done("label-distill")
    assert row["miou_seeds"] == [0.40, 0.44, 0.45] and row["seeds"] == [0, 1, 2]
    assert row["miou"] == pytest.approx(0.43) and row["miou_std"] == pytest.approx(0.026457513, abs=1e-8)
    assert row["per_class"] == {"skin": pytest.approx(0.3), "dress": pytest.approx(0.2)}
    assert row["pixel_accuracy"] == pytest.approx(0.93) and row["seconds"] == 20.0
    assert row["command"] == "train --seed 0" and "seed" not in row  # the runner's seed's command
    assert runner.row_done("label-distill-long") == single  # one seed: today's record, no miou_seeds
    assert runner.row_done("label-distill-2x") is None
    table = ccp_quality.markdown([row, single])
    assert "| label-distill | x | **0.430 ± 0.026 (3)** | 0.30 | 0.20 |" in table
    assert "| label-distill-long | x | **0.500** | 0.50 | 0.50 |" in table
    # a pretraining row: no score; its feature-loss summary averaged over the seeds, printed as such
    pretrain = [_fake_record("feature-distill", None, None, 8.0, pretrain={"steps": 3, "feat_mse_first": f,
                                                                           "feat_mse_last": f / 2}, seed=s)
                for s, f in ((0, 1.0), (1, 3.0))]
    row = ccp_quality.aggregate_seeds(pretrain, [0, 1])
    assert row["miou"] is None and row["pretrain"] == {"steps": 3, "feat_mse_first": 2.0, "feat_mse_last": 1.0}
    assert row["pretrain_seeds"] == [p["pretrain"] for p in pretrain] and "miou_seeds" not in row
    assert "| feature-distill | x | n/a (pretraining: feature MSE 2 -> 1) | n/a | n/a |" in ccp_quality.markdown(
        [single, row])

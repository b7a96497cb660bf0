"""bench/own_domain.py: the own-domain paths' commands and refusals (the runs themselves are benchmarks)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import own_domain  # noqa: E402


def test_an_unknown_path_is_one_line_and_nothing_runs(tmp_path):
    (tmp_path / "ds").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "own_domain.py"), "--data", tmp_path / "ds",
                             "--size", "48x64", "--paths", "supervised,distill", "--out", tmp_path / "runs",
                             "--results", tmp_path / "r.json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "'distill': paths are supervised, pretrained, finetune, scratch" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.json").exists()


def test_every_path_trains_the_same_student(tmp_path):
    """Only the data (and the distillation temperature) differ between the baseline and a teacher path: same
    network, steps, batch, size, lr, class balance, seed, val; the 20 labelled photos drawn 20x as often."""
    ds = tmp_path / "horse"
    flows = {p: own_domain.Flow(ds, "48x64", p, 15, tmp_path / "runs", 1, 400, 64, 10, "25") for p in own_domain.PATHS}
    base = flows["supervised"].student_cmd(tmp_path / "s", 2, [ds / "annotated-20"])
    parts = [tmp_path / "synthetic", tmp_path / "pseudo", ds / "annotated-20"]
    distill = flows["finetune"].student_cmd(tmp_path / "s", 2, parts)

    def options(cmd):
        return {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--") and
                not cmd[i + 1].startswith("--") and cmd[i] != "--data"}

    b, d = options(base), options(distill)
    assert b.pop("--mode") == "supervised" and d.pop("--mode") == "label-distill"
    assert d.pop("--tau") == "4" and d.pop("--data-weights") == "1,1,20"
    assert b == d
    assert b["--max-steps"] == "400" and b["--seed"] == "2" and b["--image-size"] == "48x64"
    assert b["--val"] == str(ds / "val")
    assert flows["finetune"].dir.name == "finetune-15min" and flows["pretrained"].dir.name == "pretrained"


def test_the_table_reads_a_row():
    row = {"dataset": "horse", "path": "finetune", "gen_minutes": 15, "teacher_miou": 0.7932,
           "student_miou": 0.8077, "student_miou_std": 0.0024, "student_miou_seeds": [0.8, 0.81, 0.81],
           "total_s": 2261}
    line = own_domain.markdown([row]).splitlines()[-1]
    assert line == "| horse | finetune | 15 min | 0.793 | 0.808 ± 0.002 (3) | 38 min |"

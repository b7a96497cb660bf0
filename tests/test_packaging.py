"""A non-editable wheel installs one top-level import name, with student/, app/, data/ inside it."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_single_top_level_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("labelgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"labelgen"}
    for module in ("labelgen/student/__init__.py", "labelgen/app/__init__.py", "labelgen/data/shards.py",
                   "labelgen/data/ccp.py", "labelgen/torchvision_compat.py"):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "labelgen = labelgen.cli:main" in entry_points and "student = labelgen.student.cli:main" in entry_points

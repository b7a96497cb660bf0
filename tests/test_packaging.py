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
                   "labelgen/data/ccp.py", "labelgen/torchvision_compat.py",
                   "labelgen/app/frontend/mask_canvas/index.html"):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "labelgen = labelgen.cli:main" in entry_points and "student = labelgen.student.cli:main" in entry_points


def test_wheel_ships_the_default_teacher(tmp_path):
    from labelgen.default_teacher import DEFAULT_TEACHER_DIR, default_teacher_available

    if not default_teacher_available():
        return  # a checkout without the trained default: nothing to ship
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("labelgen-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(DEFAULT_TEACHER_DIR.parent.parent)) for p in DEFAULT_TEACHER_DIR.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and "cache" not in p.parts}
    assert shipped <= names, sorted(shipped - names)[:5]

"""The main job (`labelgen demo`) on the embedded default teacher, and its error without one."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from labelgen import default_teacher
from labelgen.data.shards import ShardReader
from labelgen.errors import LabelgenError


@pytest.mark.skipif(not default_teacher.default_teacher_available(), reason="no embedded default teacher in this checkout")
def test_demo_synthesizes_and_writes_the_overlay_grid(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "labelgen.cli", "demo", "--out", str(out), "--n", "2", "--batch-size", "2"],
                            capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    samples = list(ShardReader(out / "synthetic"))
    assert len(samples) == 2 and all(s.soft is not None and s.soft.shape == (8, 96, 64) for s in samples)
    h, w = samples[0].image.shape[:2]
    assert (h, w) == (96, 64) and set(np.unique(samples[0].mask)) <= set(range(8))
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape[0] > 2 * h and grid.shape[1] > 4 * w  # image | overlay tiles, upscaled 2x
    # the workspace copy is writable and points at the packaged generator, not a copy of it
    workspace_json = (out / "workspace" / "workspace.json").read_text()
    assert str(default_teacher.DEFAULT_GENERATOR_DIR) in workspace_json
    assert not (out / "workspace" / "generator").exists()


def test_missing_default_teacher_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(default_teacher, "DEFAULT_WORKSPACE_DIR", tmp_path / "nothing")
    with pytest.raises(LabelgenError, match="no teacher trained yet"):
        default_teacher.copy_default_workspace(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()

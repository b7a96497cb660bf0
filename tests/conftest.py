"""Shared test fixtures. Everything is made in code or bundled under tests/fixtures (no ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import labelgen  # noqa: F401  (installs the torchvision compat shim before any test imports smp/timm)

FIXTURES = Path(__file__).parent / "fixtures"
# The tests' generator plug-ins ("teacher_fakes:FakeGAN", tests/ on PYTHONPATH; the student's
# "labelgen.student.testing:FakeGenerator") through the explicit opt-in (labelgen.generators.PLUGINS_ENV); set in
# os.environ so the CLI subprocesses the tests start inherit it.
os.environ["LABELGEN_PLUGINS"] = "teacher_fakes,labelgen.student.testing"


@pytest.fixture(autouse=True, scope="session")
def _private_digest_cache(tmp_path_factory):
    """Checkpoint content hashes (labelgen.teacher) are cached under $LABELGEN_CACHE: a temp folder, not ~/.cache
    (set in the environment, so CLI subprocesses inherit it)."""
    import os

    previous = os.environ.get("LABELGEN_CACHE")
    os.environ["LABELGEN_CACHE"] = str(tmp_path_factory.mktemp("labelgen-cache"))
    yield
    if previous is None:
        os.environ.pop("LABELGEN_CACHE", None)
    else:
        os.environ["LABELGEN_CACHE"] = previous


@pytest.fixture
def ccp_mini() -> Path:
    """A 7-photo excerpt of CCP in its published layout (real .mat files), downscaled to 55x83."""
    return FIXTURES / "ccp_mini"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


class _Payload:
    """Unpickling this object calls open(marker, "w"): a crafted resume file that runs code when loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def plant_payload():
    """plant_payload(path, marker): write a torch file at ``path`` whose unpickling would create ``marker``."""
    import torch

    def plant(path: Path, marker: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": 1, "kind": "student", "step": 1, "payload": _Payload(marker)}, path)
        assert not marker.exists()
        return path

    return plant

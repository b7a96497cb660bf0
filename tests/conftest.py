"""Shared test fixtures. Everything is made in code or bundled under tests/fixtures (no ../shared)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import labelgen  # noqa: F401  (installs the torchvision compat shim before any test imports smp/timm)

FIXTURES = Path(__file__).parent / "fixtures"
# The tests' generator plug-ins ("teacher_fakes:FakeGAN", tests/ on PYTHONPATH) through the explicit opt-in
# (labelgen.generators.PLUGINS_ENV); set in os.environ so the CLI subprocesses the tests start inherit it.
os.environ["LABELGEN_PLUGINS"] = "teacher_fakes"


@pytest.fixture
def ccp_mini() -> Path:
    """A 7-photo excerpt of CCP in its published layout (real .mat files), downscaled to 55x83."""
    return FIXTURES / "ccp_mini"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

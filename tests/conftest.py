"""Shared test fixtures. Everything is made in code or bundled under tests/fixtures (no ../shared)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import labelgen  # noqa: F401  (installs the torchvision compat shim before any test imports smp/timm)

FIXTURES = Path(__file__).parent / "fixtures"


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

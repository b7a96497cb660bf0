"""Offline hygiene: the CLIs work without a network and never try to connect (albumentations' update
check on import is switched off by labelgen/__init__.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the given CLI with every way out of the process refused and recorded; prints the attempts.
BOOTSTRAP = r"""
import socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("network disabled by the offline test")
for owner, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"), (socket, "create_connection"),
                    (socket, "getaddrinfo")):
    setattr(owner, name, refuse)
import atexit
atexit.register(lambda: sys.stderr.write("".join(f"NETWORK ATTEMPT {a}\n" for a in attempts)))
cli = sys.argv[1]
sys.argv = [cli] + sys.argv[2:]
if cli == "labelgen":
    from labelgen.cli import main
else:
    from labelgen.student.cli import main
main()
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_ALBUMENTATIONS_UPDATE", "HF_HUB_DISABLE_TELEMETRY")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _run(tmp_path: Path, *argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", BOOTSTRAP, *argv], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=600)


def test_albumentations_update_check_would_connect_without_labelgen(tmp_path):
    """The guard is real: importing albumentations alone (without labelgen's setting) tries the network."""
    code = BOOTSTRAP.replace('cli = sys.argv[1]', 'import albumentations\nraise SystemExit(0)\ncli = 0')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert "NETWORK ATTEMPT" in proc.stderr, proc.stderr[-2000:]


def test_cli_runs_with_networking_refused_and_never_connects(tmp_path):
    from labelgen.student.testing import make_folder

    make_folder(tmp_path / "data", 4, (32, 32), split="train")
    steps = [
        ("labelgen", "data", "info", "data/train"),
        ("labelgen", "data", "export", "data/train", "coco_out", "--format", "coco"),
        ("labelgen", "data", "import", "coco_out", "--out", "again"),
        ("student", "train", "--mode", "supervised", "--data", "again/train", "--out", "run", "--max-steps", "1",
         "--batch-size", "2", "--image-size", "32x32", "--no-progress", "--threads", "1"),
        ("student", "export", "--checkpoint", "run", "--onnx", "s.onnx"),
    ]
    for argv in steps:
        proc = _run(tmp_path, *argv)
        assert proc.returncode == 0, (argv, proc.stderr[-3000:])
        assert "NETWORK ATTEMPT" not in proc.stderr, (argv, proc.stderr[-3000:])
    assert (tmp_path / "s.onnx").is_file()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare")
def test_cli_in_a_network_namespace(tmp_path):
    """Where a network namespace can be made (root, or user namespaces allowed): no interface at all."""
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a network namespace here")
    from labelgen.student.testing import make_folder

    make_folder(tmp_path / "data", 2, (32, 32), split="train")
    proc = _run(tmp_path, "labelgen", "data", "export", "data/train", "voc_out", "--format", "voc",
                prefix=("unshare", "-n"))
    assert proc.returncode == 0 and "NETWORK ATTEMPT" not in proc.stderr, proc.stderr[-3000:]
    assert (tmp_path / "voc_out" / "labelmap.txt").is_file()

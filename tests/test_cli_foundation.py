"""The command lines: help listings, CCP import, and one-line errors with a non-zero exit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("program, expected", [
    ("labelgen", {"data", "init", "sample", "import", "train-heads", "synthesize", "train-generator", "app", "demo"}),
    ("student", {"train", "eval", "predict", "export"}),
])
def test_help_lists_commands_with_descriptions(program, expected):
    result = run(program, "--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:")[1].strip().splitlines()
    assert {line.split()[0] for line in commands} == expected
    for line in commands:  # every listed command has a one-line description
        name, _, description = line.strip().partition(" ")
        assert description.strip(), f"{program} {name} has no description"


def test_import_ccp_cli(ccp_mini, tmp_path):
    out = tmp_path / "ccp"
    result = run("labelgen", "data", "import-ccp", "--src", str(ccp_mini), "--out", str(out),
                 "--size", "24x16", "--limit", "2", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "wrote 6 photos into 6 splits at 24x16" in result.stdout
    info = run("labelgen", "data", "info", str(out / "val"))
    assert "2 images, 2 with masks" in info.stdout and "background, skin, hair" in info.stdout


@pytest.mark.parametrize("args, message", [
    (["data", "import-ccp", "--src", "/nonexistent", "--out", "X"], "not the CCP layout"),
    (["data", "info", "/nonexistent"], "/nonexistent: not found"),
])
def test_bad_input_is_one_line_error_and_nonzero_exit(args, message, tmp_path):
    result = run("labelgen", *[a.replace("X", str(tmp_path / "o")) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_bad_size_option(tmp_path, ccp_mini):
    result = run("labelgen", "data", "import-ccp", "--src", str(ccp_mini), "--out", str(tmp_path / "o"), "--size", "big")
    assert result.returncode != 0 and "expected HxW" in result.stderr

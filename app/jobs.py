"""Background jobs of the app (head training): a subprocess running the CLI, its log in the workspace.

    W/.app/train.json   {"pid", "cmd", "log", "started", "finished", "returncode"}   (atomic)
    W/.app/train.log    the command's stdout + stderr

The page never waits on the job: it polls these files, so the UI stays responsive and a reloaded
page (or a second browser tab) sees the same job.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from labelgen.data.io import atomic_write_json, read_json
from labelgen.errors import LabelgenError
from labelgen.workspace import Workspace

_PROCS: dict[str, subprocess.Popen] = {}  # job file -> process started by this server
_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


def job_dir(ws: Workspace) -> Path:
    return ws.root / ".app"


def _job_file(ws: Workspace, name: str) -> Path:
    return job_dir(ws) / f"{name}.json"


def train_command(ws: Workspace, epochs: int = 30, holdout: int = 0, extra: list[str] | None = None) -> list[str]:
    """`labelgen train-heads` on the workspace (the teacher CLI): ``holdout`` = the last K annotated
    images are not trained on and their per-class IoU goes to W/heads/train_log.json."""
    cmd = [sys.executable, "-m", "labelgen.cli", "train-heads", "--workspace", str(ws.root), "--epochs", str(int(epochs)),
           "--holdout", str(int(holdout))]
    return cmd + list(extra or [])


def start(ws: Workspace, name: str, cmd: list[str]) -> dict:
    """Start ``cmd`` in the background unless a job ``name`` is already running."""
    current = status(ws, name)
    if current and current.get("running"):
        raise LabelgenError(f"{name} is already running (pid {current['pid']})")
    job_dir(ws).mkdir(parents=True, exist_ok=True)
    log = job_dir(ws) / f"{name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="100")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(ws.root), env=env, start_new_session=True)
    _PROCS[str(_job_file(ws, name))] = proc
    record = {"pid": proc.pid, "cmd": cmd, "log": log.name, "started": time.time(), "finished": None, "returncode": None}
    atomic_write_json(_job_file(ws, name), record)
    return record


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie child of ours counts as finished
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def status(ws: Workspace, name: str) -> dict | None:
    """The job's record + ``running`` (bool), ``progress`` (0..1 or None) and ``log_tail``."""
    path = _job_file(ws, name)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except LabelgenError:
        return None
    proc = _PROCS.get(str(path))
    if record.get("finished") is None:
        if proc is not None and proc.pid == record.get("pid"):
            code = proc.poll()
            running = code is None
        else:
            running, code = _alive(int(record["pid"])), None
        if not running:
            record.update(finished=time.time(), returncode=code)
            atomic_write_json(path, record)
    record["running"] = record.get("finished") is None
    text = _tail(job_dir(ws) / record.get("log", f"{name}.log"))
    record["log_tail"] = text
    record["progress"] = parse_progress(text)
    return record


def stop(ws: Workspace, name: str) -> None:
    record = status(ws, name)
    if record and record.get("running"):
        try:
            os.killpg(int(record["pid"]), signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: Path, limit: int = 6000) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode(errors="replace")


def parse_progress(text: str) -> float | None:
    """Progress 0..1 from the last progress line of a log (tqdm/rich 'k/n' or 'p%')."""
    for line in reversed(re.split(r"[\r\n]+", text)):
        m = _PERCENT.search(line)
        if m and 0 <= float(m.group(1)) <= 100:
            return float(m.group(1)) / 100
        for a, b in reversed(_FRACTION.findall(line)):
            if int(b) > 0 and int(a) <= int(b):
                return int(a) / int(b)
    return None

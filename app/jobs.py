"""Background jobs of the app (head training): a subprocess running the CLI, its log in the workspace.

    W/.app/train.json   {"pid", "cmd", "log", "progress_log", "started", "finished", "returncode"}   (atomic)
    W/.app/train.log    the command's stdout + stderr (shown as the log tail)

Progress comes from the job's run log (``progress_log``, a labelgen.run log.csv: the last row's
step / total; for head training W/heads/log.csv), never from parsing stdout. The page never waits
on the job: it polls these files, so the UI stays responsive and a reloaded page (or a second
browser tab) sees the same job.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from labelgen.data.io import atomic_write_json, read_json
from labelgen.errors import LabelgenError
from labelgen.run import LOG_NAME, read_progress
from labelgen.workspace import Workspace

_PROCS: dict[str, subprocess.Popen] = {}  # job file -> process started by this server


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


def train_progress_log(ws: Workspace) -> Path:
    """The run log `labelgen train-heads` writes (labelgen.heads.train): W/heads/log.csv."""
    return ws.heads_dir / LOG_NAME


def start(ws: Workspace, name: str, cmd: list[str], progress_log: Path | None = None) -> dict:
    """Start ``cmd`` in the background unless a job ``name`` is already running. ``progress_log``:
    the run log (labelgen.run log.csv) the command writes; its rows written after the start are the
    job's progress."""
    current = status(ws, name)
    if current and current.get("running"):
        raise LabelgenError(f"{name} is already running (pid {current['pid']})")
    job_dir(ws).mkdir(parents=True, exist_ok=True)
    log = job_dir(ws) / f"{name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="100")
    started = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(ws.root), env=env, start_new_session=True)
    _PROCS[str(_job_file(ws, name))] = proc
    record = {"pid": proc.pid, "cmd": cmd, "log": log.name,
              "progress_log": None if progress_log is None else str(progress_log),
              "started": started, "finished": None, "returncode": None}
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
    record["progress"] = job_progress(record)
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


def job_progress(record: dict) -> float | None:
    """0..1 from the last row of the job's run log (None: no log, or none written since the job started)."""
    path = record.get("progress_log")
    if not path or not Path(path).is_file() or Path(path).stat().st_mtime < float(record.get("started") or 0):
        return None  # a log left by an earlier run is not this job's progress
    found = read_progress(path)
    return None if found is None else min(1.0, found[0] / found[1])

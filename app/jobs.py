"""Background jobs of the app (head training): a subprocess running the CLI, its log in the workspace.

    W/.app/train.json   {"pid", "start_ticks", "cmd", "token", "log", "progress_log", "started", "finished",
                         "returncode"}   (atomic)
    W/.app/train.log    the command's stdout + stderr (shown as the log tail)

Progress comes from the job's run log (``progress_log``, a labelgen.run log.csv: the last row's
step / total; for head training W/heads/log.csv), never from parsing stdout. The page never waits
on the job: it polls these files, so the UI stays responsive and a reloaded page (or a second
browser tab) sees the same job.

Safety. A job never runs code from a user folder: its working directory is the filesystem root and
Python runs with ``-P`` (3.11+: the working directory is not put on sys.path), so neither it nor the
workspace is importable. A job file is data anyone with write access to the workspace can edit, so
before a process counts as the job (running, or to be stopped) it must match the file in all of:
pid, start time (/proc/<pid>/stat field 22), command line, own process group (start_new_session), and
a random token in its environment ($LABELGEN_APP_JOB; /proc/<pid>/environ is readable only by its
owner, so the token cannot be copied onto someone else's process). Stop refuses any other process.
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from labelgen.app.cli import NEUTRAL_CWD, SAFE_PATH
from labelgen.data.io import atomic_write_json, read_json
from labelgen.errors import LabelgenError
from labelgen.run import LOG_NAME, read_progress
from labelgen.workspace import Workspace

_PROCS: dict[str, subprocess.Popen] = {}  # job file -> process started by this server
TOKEN_ENV = "LABELGEN_APP_JOB"


def job_dir(ws: Workspace) -> Path:
    return ws.root / ".app"


def _job_file(ws: Workspace, name: str) -> Path:
    return job_dir(ws) / f"{name}.json"


def train_command(ws: Workspace, epochs: int = 30, holdout: int = 0, extra: list[str] | None = None) -> list[str]:
    """`labelgen train-heads` on the workspace (the teacher CLI): ``holdout`` = the last K annotated
    images are not trained on and their per-class IoU goes to W/heads/train_log.json."""
    cmd = [sys.executable, *SAFE_PATH, "-m", "labelgen.cli", "train-heads", "--workspace", str(ws.root),
           "--epochs", str(int(epochs)), "--holdout", str(int(holdout))]
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
    token = secrets.token_hex(16)
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="100", **{TOKEN_ENV: token})
    started = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(NEUTRAL_CWD), env=env, start_new_session=True)
    _PROCS[str(_job_file(ws, name))] = proc
    seen = _process(proc.pid)  # not reaped yet (even if it already exited): its stat is still there
    record = {"pid": proc.pid, "start_ticks": None if seen is None else seen["start_ticks"], "cmd": cmd,
              "token": token, "log": log.name, "progress_log": None if progress_log is None else str(progress_log),
              "started": started, "finished": None, "returncode": None}
    atomic_write_json(_job_file(ws, name), record)
    return record


def _process(pid: int) -> dict | None:
    """/proc's view of process ``pid``: start_ticks (clock ticks after boot), state, pgid, cmd (argv) and
    environ (set of "K=V"); None when there is no such process or it is not ours to read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": fields[0] = field 3 (state)
    return {"start_ticks": int(fields[19]), "state": fields[0], "pgid": int(fields[2]),
            "cmd": [os.fsdecode(a) for a in argv], "environ": {os.fsdecode(e) for e in environ}}


def _is_job(record: dict) -> bool:
    """Whether the live process the record names is the job that wrote it (see the module docstring);
    a zombie (empty command line) is a finished job."""
    pid = record.get("pid")
    if type(pid) is not int or pid <= 0 or not record.get("token"):  # killpg(0 / -1) would hit us / everyone
        return False
    seen = _process(pid)
    return (seen is not None and seen["start_ticks"] == record.get("start_ticks") and seen["cmd"] == record.get("cmd")
            and seen["pgid"] == pid and f"{TOKEN_ENV}={record['token']}" in seen["environ"])


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
            running, code = _is_job(record), None
        if not running:
            record.update(finished=time.time(), returncode=code)
            atomic_write_json(path, record)
    record["running"] = record.get("finished") is None
    text = _tail(job_dir(ws) / record.get("log", f"{name}.log"))
    record["log_tail"] = text
    record["progress"] = job_progress(record)
    return record


def stop(ws: Workspace, name: str) -> None:
    """SIGTERM the job's process group once the process is verified to be the job (:func:`_is_job`);
    a job file naming any other process is refused (LabelgenError) and nothing is signalled."""
    path = _job_file(ws, name)
    try:
        record = read_json(path) if path.is_file() else None
    except LabelgenError:
        record = None
    if not record or record.get("finished") is not None:
        return
    if not _is_job(record):
        status(ws, name)  # marks the record finished (the job it names is gone, or never was this job)
        raise LabelgenError(f"{path}: pid {record.get('pid')} is not (or no longer) the {name} job this app "
                            f"started (gone, or its start time, command line or token differ); nothing signalled")
    try:
        os.killpg(record["pid"], signal.SIGTERM)
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

"""One run infrastructure for every loop (DDPM and StyleGAN2 trainers, heads, student) and synthesis; the
training engine the loops run on (labelgen.engine) is built from these.

    pick_device(name)            "auto" | "cpu" | "cuda[:k]" -> torch.device (one clear error without a GPU)
    option_on(value, device)     the one rule of the speed options (bf16, channels_last, compile):
                                 "auto" = on for CUDA only
    init_dist() -> Dist          torchrun set-up from WORLD_SIZE/RANK/LOCAL_RANK (gloo on CPU, nccl on GPU);
                                 Dist: rank, world, device, barrier, broadcast, sum, gather, close
    seed_everything(seed, dev)   python, numpy, torch (and CUDA) seeds -> a torch.Generator on dev seeded the same
    rng_state() / set_rng_state  the same generators (+ an optional torch.Generator) as plain tensors and
                                 numbers, so a resume file never needs pickled objects
    save_resume / load_resume    the ONE resume-file layout (below), loaded with ``weights_only=True``
    RunLock(folder)              exclusive lock of an output folder ("in use by pid N"); a dead holder's
                                 lock is taken over (flock is released by the kernel); stale temp files
                                 of atomic writes in the folder are removed once the lock is held
    new_folder(out, what)        build a new OUT in OUT.partial under that folder's RunLock, renamed at the end
    RunLog(folder, columns)      FOLDER/log.csv (one row per logged step, flushed per row, truncated to the
                                 resumed step) + FOLDER/tb/ (TensorBoard, purge_step = the resumed step)
    read_progress(log.csv)       (step, total) of the last row: how the app shows a job's progress
    progress(total, ...)         the one progress bar (tqdm on stderr)

Resume file (``RUN/last.pt`` of a student run, ``OUT/train/checkpoint.pt`` of a generator run)::

    {"format": 1, "kind": "student" | "ddpm" | "stylegan2", "step": int, "seconds": float,
     "config": {...}, "rng": [rng_state() per rank], ...state dicts (model, optimizer, ...)}

Only dicts, lists, tuples, str, int, float, bool, None and tensors: ``save_resume`` refuses
anything else, and ``load_resume`` loads with ``torch.load(weights_only=True)`` so a crafted file
cannot run code; a file that needs more is refused with one line.
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from labelgen.data.io import atomic_write, atomic_write_bytes
from labelgen.errors import DataError, LabelgenError

RESUME_FORMAT = 1
LOG_NAME = "log.csv"  # FOLDER/log.csv: step, total, then the loop's columns
TB_DIR = "tb"
LOCK_NAME = ".lock"
QUIET_ENV = "LABELGEN_QUIET"  # =1: no progress bars (progress(); set by every command's --quiet, labelgen.cli)


# ---------------------------------------------------------------- device / distributed
def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """"auto": cuda:<local_rank> when a GPU is visible, else cpu; an explicit cuda without a GPU is an error."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LabelgenError("--device cuda requested but no CUDA GPU is available")
    return torch.device(device)


def option_on(value: bool | str | None, device: torch.device, true_anywhere: bool = False) -> bool:
    """Whether a speed option (bf16, channels_last, compile: "auto" | True | False) is on for ``device``:
    "auto" (or None) = on for CUDA only, False = off. True = on for CUDA only too, unless ``true_anywhere``
    (options that also work, if slowly, on the CPU: compile, the heads' bf16 in tests)."""
    if value is False:
        return False
    if value is True and true_anywhere:
        return True
    return device.type == "cuda"


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 and ``active`` False when run alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False
    device: torch.device = torch.device("cpu")  # this rank's device (collective tensors live there for nccl)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        holder = [obj]
        torch.distributed.broadcast_object_list(holder, src=0)
        return holder[0]

    def sum(self, value: int) -> int:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(t)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.active = False


def init_dist(device: str = "auto") -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: one process group (gloo on CPU, nccl on GPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1:
        return Dist(device=dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, True, dev)


# ---------------------------------------------------------------- RNG
def seed_everything(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The one seeding function: python, numpy and torch (CUDA too) seeded with ``seed``; returns a new
    torch.Generator on ``device`` seeded the same, for a loop's own draws (batches, noise, augmentation)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)  # CUDA generators too
    return torch.Generator(device).manual_seed(seed)


def rng_state(gen: torch.Generator | None = None) -> dict[str, Any]:
    """python, numpy, torch, CUDA (and ``gen``) generator states as tensors and numbers only."""
    version, keys, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "keys": torch.tensor(keys, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if gen is not None:
        state["gen"] = gen.get_state()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator | None = None) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(k) for k in py["keys"].tolist()), py["gauss"]))
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if gen is not None:
        gen.set_state(state["gen"])


# ---------------------------------------------------------------- resume files
_PLAIN = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(obj: Any, where: str = "state") -> None:
    """Raise TypeError unless ``obj`` loads back with ``weights_only=True`` (a programming error, not user input)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is not a str/int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN):
        raise TypeError(f"{where}: {type(obj).__name__} cannot go into a resume file (tensors and plain values only)")


def save_resume(path: Path, kind: str, step: int, state: dict[str, Any]) -> None:
    """Write the resume file atomically: {"format", "kind", "step", **state} (plain values + tensors)."""
    payload = {"format": RESUME_FORMAT, "kind": kind, "step": int(step), **state}
    _check_plain(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_resume(path: Path, kind: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """The resume file at ``path``, loaded with ``weights_only=True`` (never unpickles arbitrary objects).

    ``kind``: the run kind(s) the caller can continue; another kind is refused."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable or unsafe file is one user-facing error
        reason = "holds more than tensors and plain values" if "weights_only" in str(e) else type(e).__name__
        raise LabelgenError(f"{path}: unreadable resume state ({reason}); not loaded: delete it to start "
                            "over") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or "step" not in state:
        raise LabelgenError(f"{path}: not a labelgen resume file (format {RESUME_FORMAT}); delete it to start over")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and state.get("kind") not in kinds:
        raise LabelgenError(f"{path}: holds a {state.get('kind')} run, not {' or '.join(kinds)}")
    return state


# ---------------------------------------------------------------- output-folder lock
class RunLock:
    """Exclusive lock of an output folder for the life of a run (``with RunLock(folder): ...``).

    ``FOLDER/.lock`` holds the owner's pid; the lock itself is an ``flock`` the kernel drops when the
    owner dies, so a stale lock of a killed run is simply taken over. Once held, the temp files that
    atomic writes of a killed run left in the folder (and in ``clean``) are removed (``.NAME.*.tmp``)."""

    def __init__(self, folder: Path | str, what: str = "run", clean: Sequence[Path | str] = ()):
        self.folder = Path(folder)
        self.what = what
        self.clean = [self.folder, *map(Path, clean)]  # folders whose stale temp files go once the lock is held
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock made (removed again if the run leaves them empty)

    def acquire(self) -> "RunLock":
        if self.folder.exists() and not self.folder.is_dir():
            raise LabelgenError(f"{self.folder}: exists and is not a folder")
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LabelgenError(f"{self.folder}: in use by pid {holder} (another {self.what} writes there); "
                                "wait for it to finish or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        for folder in self.clean:
            clean_stale_temps(folder)
        return self

    def release(self) -> None:
        """Drop the lock; a folder this lock created and the run left empty (a refused command) goes again,
        so a refused command leaves the file system as it was."""
        if self._fd is None:
            return
        if self._created and self.folder.is_dir() and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            (self.folder / LOCK_NAME).unlink(missing_ok=True)
            for folder in self._created:  # innermost first
                try:
                    folder.rmdir()
                except OSError:
                    break
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def new_folder(out: Path | str, what: str) -> Iterator[Path]:
    """Build the new folder ``out`` in ``OUT.partial`` (yielded), holding that folder's RunLock: a second run
    building ``out`` is refused ("in use by pid N"), ``out`` already there is refused, a killed run's leftovers
    are cleared first; a failing body leaves no ``OUT.partial``, a finished one is renamed to ``out`` (so ``out``
    is absent or complete)."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")

    def clear() -> None:  # all but the lock file (RunLock.release removes the folder it made)
        for child in partial.iterdir():
            if child.name != LOCK_NAME:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() and not child.is_symlink() else \
                    child.unlink(missing_ok=True)

    with RunLock(partial, what) as lock:
        if out.exists():
            raise DataError(f"{out}: already exists; choose a new output folder")
        clear()  # a killed run's leftovers
        try:
            yield partial
        except BaseException:
            clear()
            lock._created = lock._created or [partial]  # no OUT.partial left (a killed run's went too)
            raise
        os.replace(partial, out)  # the lock file goes with it: a run locking OUT.partial from now on sees OUT
        (out / LOCK_NAME).unlink(missing_ok=True)
        lock._created = []  # OUT.partial is no longer this run's folder


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove ``.NAME.*.tmp`` files (atomic writes a kill interrupted) directly in ``folder``; only
    call while holding the folder's RunLock (no live writer of this folder can own them)."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ---------------------------------------------------------------- log
class RunLog:
    """FOLDER/log.csv (columns: step, total, *columns) + FOLDER/tb/ for one run.

    ``resume_step`` 0 starts both afresh; otherwise rows after ``resume_step`` (logged after the
    checkpoint being resumed) are dropped, and TensorBoard purges its events after it. Each row is
    flushed as written, so a killed run loses nothing that was logged; ``flush()`` (at every
    checkpoint) also flushes TensorBoard."""

    def __init__(self, folder: Path | str, columns: Sequence[str], total: int, resume_step: int = 0,
                 tensorboard: bool = True):
        self.folder = Path(folder)
        self.columns = ["step", "total", *columns]
        self.total = int(total)
        self.path = self.folder / LOG_NAME
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = _read_rows(self.path) if resume_step else []
        if not rows or rows[0] != self.columns:
            rows = [self.columns]
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= resume_step]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(kept)

        atomic_write(self.path, write)
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.folder / TB_DIR), purge_step=resume_step if resume_step else None)

    def row(self, step: int, values: dict[str, Any], scalars: dict[str, float] | None = None) -> None:
        """One CSV row (``values`` by column name; missing ones empty) + TensorBoard ``scalars`` (name: value)."""
        unknown = set(values) - set(self.columns)
        if unknown:
            raise ValueError(f"log columns {sorted(unknown)} not in {self.columns}")
        self._csv.writerow([step, self.total, *("" if values.get(c) is None else values[c] for c in self.columns[2:])])
        self._file.flush()
        if self.tb is not None:
            for name, value in (scalars or {}).items():
                self.tb.add_scalar(name, value, step)

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.tb is not None:
            self.tb.add_scalar(name, value, step)

    def flush(self) -> None:
        self._file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self.tb is not None:
            self.tb.close()

    def discard(self) -> None:
        """Close and remove log.csv and tb/ (a new run that failed before it saved anything)."""
        self.close()
        self.path.unlink(missing_ok=True)
        shutil.rmtree(self.folder / TB_DIR, ignore_errors=True)


def _read_rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.reader(f)]


def read_log(path: Path | str) -> list[dict[str, str]]:
    """The rows of a RunLog's log.csv as dicts (column -> text); [] when missing."""
    rows = _read_rows(Path(path))
    return [dict(zip(rows[0], r)) for r in rows[1:] if len(r) == len(rows[0])] if rows else []


def read_progress(path: Path | str) -> tuple[int, int] | None:
    """(step, total) of the last complete row of a RunLog's log.csv; None without one."""
    for row in reversed(read_log(path)):
        try:
            step, total = int(row["step"]), int(row["total"])
        except (KeyError, ValueError):
            continue
        if total > 0:
            return step, total
    return None


# ---------------------------------------------------------------- progress
def progress(total: int | None, initial: int = 0, desc: str | None = None, unit: str = "step",
             disable: bool = False, **kwargs):
    """The one progress bar (tqdm on stderr); redraws every 0.5 s on a terminal, every 30 s into a file.
    Shown from 0.5 s on, so a command that fails at once prints its one error line and nothing else; hidden by
    every command's --quiet (QUIET_ENV: LABELGEN_QUIET=1)."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    disable = disable or os.environ.get(QUIET_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5 if tty else 30.0, smoothing=0.05, disable=disable, delay=0.5, **kwargs)

"""The training engine: what every training loop runs on (``labelgen train-generator``'s DDPM and StyleGAN2
trainers, ``labelgen train-heads``, ``student train``). A trainer is a step function over one loop, the engine's,
and writes its run folder through one writer:

    engine.fit(step_fn, start, total, Cadence(log=, validate=, sample=, checkpoint=), log=, bar=,
               on_sample=, on_validate=, on_log=, on_checkpoint=, epochs=, on_epoch=, agree_every_step=)
                                    the one loop: ``step_fn(step)`` takes one optimisation step (forward, backward,
                                    optimiser) and returns its values; the engine counts the steps (from ``start``:
                                    a resumed run), updates the bar, calls sample / validate / log / checkpoint on
                                    their cadence (every N steps, and at the last step for those in ``at_end``),
                                    decides when to stop (time limit, SIGTERM / SIGINT, every rank at the same step,
                                    checked at every step or at log steps only), checkpoints once on a stop, and
                                    returns FitResult(step, stopped). An epoch loop (the heads) is a step function
                                    that raises StopIteration at the end of each epoch's data, with ``on_epoch``
    RunFolder(root, engine, train_dir=, resume_name=)   the run folder's one writer: lock, log.csv + tb/, the
                                    resume file (save / load), the exported model (save_pretrained), weights and
                                    JSON files beside it, sample grids; rank 0 only, each file atomically

and asks the engine for everything around the step:

    Engine(device)                  device choice (labelgen.run.pick_device: auto | cpu | cuda) and torchrun
                                    (labelgen.run.init_dist: gloo on CPU, nccl on GPU; world 1 without torchrun)
      .autocast()  .channels_last(x)   mixed precision: bf16 autocast and channels_last on CUDA only
      .optimizer(cls, params, **kw)   an Adam / AdamW under the one fused-optimiser rule (:func:`fused_optimizer`)
      .load_optimizer(opt, state)   its resumed state, on this device's kernel whatever the saved run used
      .shard(x)  .check_batch(n)    data parallelism over a global batch: every rank draws the same global
                                    batch from the same seeded generator and computes its rows x[rank::world]
                                    (so K processes see the data, noise and augmentation of one process)
      .average_gradients(params)    one all-reduce of the gradients (their mean over the ranks), before clipping
      .wrap(module)                 DistributedDataParallel, for a loop whose data loader gives each rank its
                                    own samples (the student)
      .mean(x)                      a tensor's mean over the ranks (the loss a step logs)
      .watch(time_limit_min)  .stop_reason(agree)   --time-limit / SIGTERM / SIGINT, one decision for all ranks
      .is_main                      rank 0: the one that writes (RunFolder: the resume file via
                                    labelgen.run.save_resume, tensors and plain values only, read back with
                                    weights_only=True; the exported weights, the log and the sample grids)
      .progress(total, ...)  .echo(text)   the progress bar and messages on rank 0 (silent elsewhere)
      .due(step, every, total)      the cadence rule fit uses (every N steps, and at ``total``)
      .close()                      every rank done, process group closed
    labelgen.run.seed_everything(seed, device)   the one seeding function: python, numpy, torch -> the loop's
                                    torch.Generator (the same seed on every rank where they draw one global batch,
                                    seed + rank where each draws its own samples)
    EMA(model, decay)               the exponential moving average of the weights that is exported / validated
    fused_optimizer(device)         the fused-optimiser rule: torch's fused Adam/AdamW kernel on the CPU and on CUDA

HF ``accelerate`` was weighed and not used: its checkpoints pickle RNG states (not loadable with
``weights_only``), its DDP wrapper does not take StyleGAN2's R1 double backward and alternating G/D phases,
and its data-loader sharding does not fit trainers that keep the whole data set on the device.
"""
from __future__ import annotations

import copy
import os
import shutil
import signal
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from labelgen.errors import LabelgenError
from labelgen.run import (LOG_NAME, TB_DIR, Dist, RunLock, RunLog, init_dist, load_resume, pick_device, progress,
                          save_resume)


def fused_optimizer(device: torch.device | str) -> bool:
    """The one fused-optimiser rule: Adam and AdamW take torch's fused kernel wherever it exists, the CPU and
    CUDA (one pass over all parameters: on the CPU the step of the 14 M-parameter U-Net/ResNet-18 student
    takes 0.06 s instead of 0.33 s; on CUDA it saves a kernel launch per tensor)."""
    return torch.device(device).type in ("cpu", "cuda")


def set_fused(opt: torch.optim.Optimizer, fused: bool) -> None:
    """After ``load_state_dict``: use (or not) the fused kernel whatever the checkpoint's run used (its ``step``
    counters live on the parameters' device when fused, on the CPU otherwise)."""
    for group in opt.param_groups:
        group["fused"] = fused
        if fused:
            group["foreach"] = None
        for p in group["params"]:
            state = opt.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(p.device if fused else "cpu", torch.float32)


class EMA:
    """Exponential moving average of a module's parameters (``shadow`` is a full copy, eval mode).

    The effective decay warms up as min(decay, (1 + step) / (10 + step)) so short runs are not
    dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_p = list(self.shadow.parameters())
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for eb, b in zip(self.shadow.buffers(), model.buffers()):
            eb.copy_(b)


class StopControl:
    """Stops a loop when ``time_limit_min`` has passed or on SIGTERM/SIGINT (checked once per step)."""

    def __init__(self, time_limit_min: float | None):
        self.start = time.monotonic()
        self.limit_s = None if time_limit_min is None else time_limit_min * 60.0
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def reason(self) -> str | None:
        if self.signal:
            return f"received {self.signal}"
        if self.limit_s is not None and self.elapsed >= self.limit_s:
            return f"time limit ({self.limit_s / 60:g} min) reached"
        return None


class _SilentLog:
    """RunLog's stand-in on ranks other than 0 (rank 0 writes the run's log)."""

    def row(self, *args, **kwargs) -> None:
        pass

    scalar = flush = close = discard = row


def _silent(*args, **kwargs) -> None:
    pass


@dataclass
class Cadence:
    """When :meth:`Engine.fit` calls each hook after a step: every N steps (0 / None: never), or, for ``validate``,
    a predicate of the step's :class:`Tick` (a time-based probe). The hooks named in ``at_end`` also run at the last
    step (``step == total``) when it is not a multiple."""

    log: int | None = None
    validate: int | None | Callable[["Tick"], bool] = None
    sample: int | None = None
    checkpoint: int | None = None
    at_end: tuple[str, ...] = ("log", "validate", "checkpoint")

    def due(self, what: str, tick: "Tick") -> bool:
        every = getattr(self, what)
        if callable(every):
            return bool(every(tick))
        return Engine.due(tick.step, every, tick.total if what in self.at_end else None)


@dataclass
class Tick:
    """What the hooks of :meth:`Engine.fit` see after a step."""

    step: int  # steps done, this one included
    total: int | None
    values: dict[str, Any]  # what the step function returned
    seconds: float  # Engine.elapsed right after the step (this session's seconds)
    log: bool = False  # a log row is due at this step (Cadence.log)
    stopped: str | None = None  # the stop decision of this step (time limit, signal), shared by the ranks
    validated: dict[str, Any] | None = None  # what on_validate returned (forces a log row)

    @property
    def last(self) -> bool:
        return self.total is not None and self.step >= self.total


@dataclass
class FitResult:
    step: int  # steps done when the loop ended
    stopped: str | None = None  # why it stopped before ``total`` (time limit, signal); None: it ran out
    epochs: int = 0  # epochs completed (a loop with ``on_epoch``)


class Engine:
    """One training run's place (device, rank), numerics and bookkeeping; see the module docstring."""

    def __init__(self, device: str = "auto", amp: bool = True, echo=print, show_progress: bool = True,
                 torchrun: bool = True):
        """``torchrun`` False: one process whatever the environment says (a loop that does not shard, the heads)."""
        self.dist = init_dist(device) if torchrun else Dist(device=pick_device(device))
        self.device = self.dist.device
        self.rank, self.world, self.is_main = self.dist.rank, self.dist.world, self.dist.is_main
        self.distributed = self.dist.active
        self.cuda = self.device.type == "cuda"
        self.amp = bool(amp) and self.cuda
        self.echo = echo if self.is_main else _silent
        self.show_progress = show_progress and self.is_main
        self.stop: StopControl | None = None

    # ---------------------------------------------------------------- numerics, optimiser
    def autocast(self):
        """bf16 autocast on CUDA when ``amp`` is on; nothing otherwise."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def channels_last(self, x):
        """A module or a 4-d batch in channels_last memory format on CUDA; unchanged on the CPU."""
        if not self.cuda:
            return x
        return x.to(memory_format=torch.channels_last) if isinstance(x, nn.Module) else \
            x.contiguous(memory_format=torch.channels_last)

    @property
    def fused(self) -> bool:
        return fused_optimizer(self.device)

    def optimizer(self, cls: type[torch.optim.Optimizer], params: Iterable, **kwargs) -> torch.optim.Optimizer:
        """``cls`` (torch.optim.Adam or AdamW) with the fused kernel where :func:`fused_optimizer` says so."""
        return cls(params, **kwargs, **({"fused": True} if self.fused else {}))

    def load_optimizer(self, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """A resumed optimiser state, continued on this device's kernel (a checkpoint of a run with the plain
        kernel, or from another device, takes the fused-optimiser rule of this one)."""
        opt.load_state_dict(state)
        set_fused(opt, self.fused)

    # ---------------------------------------------------------------- data parallelism
    def check_batch(self, batch_size: int, option: str = "--batch-size") -> None:
        """Refuse a global batch the torchrun processes cannot share equally."""
        if batch_size % self.world:
            raise LabelgenError(f"{option} {batch_size}: not divisible by the {self.world} torchrun processes "
                                "(each computes an equal share of every batch)")

    def shard(self, x):
        """This rank's rows of a global batch (a tensor or a list): rows rank, rank + world, ..."""
        return x if self.world == 1 else x[self.rank::self.world]

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the ranks (``x`` itself in one process)."""
        if not self.distributed:
            return x
        x = x.detach().clone()
        torch.distributed.all_reduce(x)
        return x.div_(self.world)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace every gradient by its mean over the ranks (one all-reduce): with equal shards of one global
        batch, the gradient one process would have computed on the whole batch."""
        if not self.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat.div_(self.world)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """DistributedDataParallel around ``module`` under torchrun (batch norm synchronised on CUDA); the module
        itself in one process."""
        if not self.distributed:
            return module
        if self.cuda:
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return nn.parallel.DistributedDataParallel(module, device_ids=[self.dist.local_rank] if self.cuda else None,
                                                   find_unused_parameters=find_unused_parameters)

    # ---------------------------------------------------------------- stopping
    @contextmanager
    def watch(self, time_limit_min: float | None) -> Iterator[StopControl]:
        """SIGTERM / SIGINT and ``time_limit_min`` ask the loop to stop (see :meth:`stop_reason`)."""
        with StopControl(time_limit_min) as stop:
            self.stop = stop
            try:
                yield stop
            finally:
                self.stop = None

    def stop_reason(self, agree: bool = True) -> str | None:
        """Why the loop should stop now (None: go on). One process: checked at every call. Under torchrun the
        ranks must stop at the same step: the decision is shared at calls with ``agree`` (a loop passes it where
        it waits for the device anyway) and is None at the others."""
        reason = self.stop.reason() if self.stop is not None else None
        if not self.distributed:
            return reason
        if not agree:
            return None
        flag = torch.tensor([0 if reason is None else 1], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if not int(flag.item()):
            return None
        return reason or "another torchrun process was stopped (signal or time limit)"

    @property
    def elapsed(self) -> float:
        return self.stop.elapsed if self.stop is not None else 0.0

    # ---------------------------------------------------------------- the loop
    def fit(self, step_fn: Callable[[int], dict[str, Any] | None], start: int = 0, total: int | None = None,
            cadence: Cadence | None = None, *, log=None, bar=None,
            on_sample: Callable[[Tick], None] | None = None,
            on_validate: Callable[[Tick], dict[str, Any] | None] | None = None,
            on_log: Callable[[Tick], tuple[dict[str, Any], dict[str, float]] | None] | None = None,
            on_checkpoint: Callable[[Tick], None] | None = None,
            epochs: int | None = None, on_epoch: Callable[[int], None] | None = None,
            agree_every_step: bool = True) -> FitResult:
        """The one training loop: ``step_fn(step)`` takes optimisation step ``step`` (0-based; forward, backward,
        optimiser) and returns its values (given to the hooks as ``tick.values``); the engine counts the steps from
        ``start`` to ``total``, and after each one, in this order:

            bar.update(1)
            on_sample(tick)       Cadence.sample (rank 0 only)
            the stop decision     inside :meth:`watch` only: time limit / SIGTERM / SIGINT, shared by the ranks at
                                  every step, or only at log steps with ``agree_every_step`` False (a loop that
                                  does not wait for the device at the other steps); ``tick.stopped``
            on_validate(tick)     Cadence.validate (rank 0 only); what it returns (values for the log row) goes to
                                  ``tick.validated`` and forces a log row
            on_log(tick)          Cadence.log (every rank: it may read values back from the device) -> (row,
                                  TensorBoard scalars) for ``log.row`` (None: no row)
            on_checkpoint(tick)   Cadence.checkpoint, and once when the loop stops (every rank)

        then ends the loop if it was stopped. Returns :class:`FitResult` (the step reached, why it stopped).
        A step function whose data runs out raises StopIteration: with ``on_epoch`` that is the end of an epoch
        (``on_epoch(epoch)`` runs, then the next epoch's steps, ``epochs`` in all), without it the end of the run.
        Anything else it raises ends the loop unhandled (a test simulating a kill raises its own exception)."""
        cadence = cadence or Cadence()
        step, epoch, stopped = int(start), 0, None
        watching = self.stop is not None
        while (total is None or step < total) and (epochs is None or epoch < epochs):
            try:
                values = step_fn(step)
            except StopIteration:  # the data of this epoch (or of the run) is done
                if on_epoch is None:
                    break
                on_epoch(epoch)
                epoch += 1
                continue
            step += 1
            if bar is not None:
                bar.update(1)
            tick = Tick(step, total, values or {}, self.elapsed)
            tick.log = cadence.due("log", tick)
            if on_sample is not None and self.is_main and cadence.due("sample", tick):
                on_sample(tick)
            if watching:
                tick.stopped = self.stop_reason(agree=agree_every_step or tick.log)
            if on_validate is not None and self.is_main and cadence.due("validate", tick):
                tick.validated = on_validate(tick) or None
            if on_log is not None and (tick.log or tick.validated):
                row = on_log(tick)
                if row is not None and log is not None:
                    log.row(step, row[0], scalars=row[1])
            if on_checkpoint is not None and (tick.stopped or cadence.due("checkpoint", tick)):
                on_checkpoint(tick)
            if tick.stopped:
                stopped = tick.stopped
                break
        return FitResult(step, stopped, epoch)

    # ---------------------------------------------------------------- progress
    def progress(self, total: int, initial: int = 0, desc: str | None = None, **kwargs):
        """The progress bar (labelgen.run.progress) on rank 0 when shown; a disabled one otherwise."""
        return progress(total, initial, desc, disable=not self.show_progress, **kwargs)

    @staticmethod
    def due(step: int, every: int | None, total: int | None = None) -> bool:
        """Whether something done every ``every`` steps (0 / None: never) is due after ``step`` (and at ``total``)."""
        return bool(every) and (step % every == 0 or step == total)

    def barrier(self) -> None:
        self.dist.barrier()

    def close(self) -> None:
        """Wait for every rank, then close the process group (torchrun)."""
        self.dist.barrier()
        self.dist.close()


class RunFolder:
    """The one writer of a training run's folder: every file a loop writes there goes through here, on rank 0
    only (the other ranks' calls do nothing; a resume file's collective parts, e.g. every rank's RNG state, are
    gathered by the loop before it calls :meth:`save_resume`), and each file is written atomically (temp + rename).

    ``ROOT`` holds the exported model (``save_pretrained``, :meth:`export`) and the files beside it; ``ROOT/DIR``
    (``train_dir``; ROOT itself by default) the run's own record: ``log.csv`` + ``tb/`` (:meth:`open_log`), the
    resume file ``resume_name`` (:meth:`save_resume` / :meth:`load_resume`) and the sample grids
    ``samples/step_NNNNNNN.png`` (:meth:`grid`). Layouts (the names come from the loops)::

        student train     RUN/last.pt  RUN/log.csv  RUN/tb/  RUN/model.safetensors + student_config.json
                          RUN/regressor.safetensors  RUN/best.safetensors  RUN/best.json
        train-generator   OUT/train/checkpoint.pt  OUT/train/log.csv  OUT/train/tb/  OUT/train/samples/step_*.png
                          OUT/ the export (diffusers DDPMPipeline layout, or generator_config.json + safetensors)
        train-heads       W/heads/log.csv  W/heads/tb/  W/heads/head_config.json + head.safetensors
                          W/heads/train_log.json
    """

    def __init__(self, root: Path | str, engine: "Engine | None" = None, *, train_dir: str = "",
                 resume_name: str | None = None, what: str = "run"):
        self.root = Path(root)
        self.dir = self.root / train_dir if train_dir else self.root
        self.resume_path = self.dir / resume_name if resume_name else None
        self.is_main = engine.is_main if engine is not None else True
        self.what = what
        self.log: RunLog | _SilentLog | None = None
        self._lock: RunLock | None = None

    # ---------------------------------------------------------------- lock
    def lock(self) -> "RunFolder":
        """Hold ROOT's RunLock (rank 0; "in use by pid N" while another run writes there); a killed run's temp
        files in ROOT and ROOT/DIR go. ``with folder.lock(): ...`` releases it."""
        if self.is_main and self._lock is None:
            self._lock = RunLock(self.root, self.what, clean=[self.dir] if self.dir != self.root else []).acquire()
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "RunFolder":
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.unlock()

    # ---------------------------------------------------------------- log
    def open_log(self, columns: Sequence[str], total: int, resume_step: int = 0):
        """DIR/log.csv + DIR/tb/ (labelgen.run.RunLog, cut back to ``resume_step``) on rank 0; a silent stand-in on
        the other ranks. Kept as ``self.log``."""
        self.log = RunLog(self.dir, columns, total, resume_step) if self.is_main else _SilentLog()
        return self.log

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()

    def discard_log(self) -> None:
        """Remove log.csv and tb/ (a new run that failed before it saved anything)."""
        if self.log is not None:
            self.log.discard()

    @contextmanager
    def previous_log_kept(self) -> Iterator[None]:
        """DIR/log.csv + tb/ describe the model saved beside them (the heads): the previous run's are set aside
        while a run trains and put back if it fails (refused, full disk, interrupted) before it saved a new model;
        dropped once it has. Set-aside ones found at the start are those of a killed run's model, still on disk:
        they are kept."""
        pairs = [(self.dir / name, self.dir / f".{name}.previous") for name in (LOG_NAME, TB_DIR)]
        for path, kept in pairs:
            if kept.exists():
                _remove(path)  # the killed run's own partial log
            elif path.exists():
                os.replace(path, kept)
        try:
            yield
        except BaseException:
            for path, kept in pairs:
                _remove(path)
                if kept.exists():
                    os.replace(kept, path)
            raise
        for _, kept in pairs:
            _remove(kept)

    # ---------------------------------------------------------------- resume
    def load_resume(self, kind: str | tuple[str, ...] | None = None) -> dict[str, Any] | None:
        """The resume file (labelgen.run.load_resume: ``weights_only``; another ``kind`` refused); None without one."""
        if self.resume_path is None or not self.resume_path.is_file():
            return None
        return load_resume(self.resume_path, kind)

    def save_resume(self, kind: str, step: int, state: dict[str, Any]) -> None:
        """Everything logged so far flushed, then the resume file (labelgen.run.save_resume), on rank 0."""
        if not self.is_main:
            return
        if self.log is not None:
            self.log.flush()
        save_resume(self.resume_path, kind, step, state)

    # ---------------------------------------------------------------- the model and the files beside it
    def export(self, model, **kwargs) -> None:
        """The model into ROOT, on rank 0: ``model.save_pretrained(ROOT, **kwargs)``, or ``model(ROOT, **kwargs)``
        for a function that writes another library's layout (a diffusers pipeline)."""
        if self.is_main:
            (model.save_pretrained if hasattr(model, "save_pretrained") else model)(self.root, **kwargs)

    def save_weights(self, name: str, module, metadata: dict[str, str] | None = None) -> None:
        """ROOT/NAME: a module's weights as safetensors (``metadata`` in its header), on rank 0."""
        from labelgen.data.io import save_safetensors

        if self.is_main:
            save_safetensors(self.root / name, module, metadata=metadata)

    def write_json(self, name: str, obj: Any) -> None:
        from labelgen.data.io import atomic_write_json

        if self.is_main:
            atomic_write_json(self.root / name, obj)

    def remove(self, *names: str) -> None:
        """ROOT/NAME files of an older run that a new one must not keep (rank 0)."""
        if self.is_main:
            for name in names:
                (self.root / name).unlink(missing_ok=True)

    def grid(self, step: int, images: torch.Tensor, cols: int | None = None) -> None:
        """DIR/samples/step_NNNNNNN.png: ``images`` float [N, 3, H, W] in [-1, 1] as one PNG grid (2-px gaps)."""
        from labelgen.data.io import write_png
        from labelgen.imaging import tensor_to_uint8
        from labelgen.visualize import grid

        if self.is_main:
            write_png(self.dir / "samples" / f"step_{step:07d}.png", grid(list(tensor_to_uint8(images)), cols=cols))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)

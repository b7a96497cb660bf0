"""labelgen.engine: the one training loop (Engine.fit: cadence, stopping, resume, epochs) and the run folder's one
writer (RunFolder). The trainers' own tests (test_train_generator, test_student, test_heads) hold the loops to
their results; these hold the loop itself."""
from __future__ import annotations

import time

import pytest
import torch

from labelgen.engine import Cadence, Engine, RunFolder
from labelgen.run import read_log


class _Log:
    def __init__(self):
        self.rows = []

    def row(self, step, values, scalars=None):
        self.rows.append((step, values, scalars))


def _fit(engine: Engine, start: int, total: int, cadence: Cadence, **kw):
    """Engine.fit with every hook recording (step, hook) in call order."""
    calls, taken, log = [], [], _Log()

    def step_fn(step):
        taken.append(step)
        return {"loss": float(step)}

    def record(name, returns=None):
        def hook(tick):
            calls.append((tick.step, name))
            return returns(tick) if returns else None
        return hook

    result = engine.fit(step_fn, start, total, cadence, log=log, on_sample=record("sample"),
                        on_validate=record("validate", lambda t: {"val": t.step}),
                        on_log=record("log", lambda t: ({"loss": t.values["loss"], **(t.validated or {})}, {})),
                        on_checkpoint=record("checkpoint"), **kw)
    return result, calls, taken, log


def _steps(calls, name):
    return [step for step, hook in calls if hook == name]


def test_fit_calls_each_hook_on_its_cadence_and_at_the_last_step():
    engine = Engine("cpu", torchrun=False)
    result, calls, taken, log = _fit(engine, 0, 7, Cadence(log=2, validate=3, sample=2, checkpoint=4))
    assert (result.step, result.stopped) == (7, None) and taken == list(range(7))
    assert _steps(calls, "sample") == [2, 4, 6]  # not at the end unless asked (at_end)
    assert _steps(calls, "validate") == [3, 6, 7]
    assert _steps(calls, "log") == [2, 3, 4, 6, 7]  # a validation forces a row
    assert _steps(calls, "checkpoint") == [4, 7]
    # the documented order within a step
    assert [hook for step, hook in calls if step == 6] == ["sample", "validate", "log"]
    assert [hook for step, hook in calls if step == 4] == ["sample", "log", "checkpoint"]
    assert [(step, values) for step, values, _ in log.rows] == [
        (2, {"loss": 1.0}), (3, {"loss": 2.0, "val": 3}), (4, {"loss": 3.0}), (6, {"loss": 5.0, "val": 6}),
        (7, {"loss": 6.0, "val": 7})]
    # at_end: the sample grid at the last step too; 0 / None: never
    _, calls, _, _ = _fit(engine, 0, 5, Cadence(log=0, sample=2, checkpoint=None, at_end=("sample",)))
    assert _steps(calls, "sample") == [2, 4, 5] and not _steps(calls, "log") + _steps(calls, "checkpoint")
    # a predicate as the validation cadence (a time-based probe)
    _, calls, _, _ = _fit(engine, 0, 4, Cadence(validate=lambda tick: tick.values["loss"] in (0.0, 2.0)))
    assert _steps(calls, "validate") == [1, 3] == _steps(calls, "log")


def test_fit_resumed_at_a_step_continues_from_it():
    engine = Engine("cpu", torchrun=False)
    result, calls, taken, log = _fit(engine, 4, 7, Cadence(log=2, checkpoint=3))
    assert taken == [4, 5, 6] and result.step == 7
    assert _steps(calls, "log") == [6, 7] and _steps(calls, "checkpoint") == [6, 7]
    # already at (or past) total: nothing runs
    result, calls, taken, _ = _fit(engine, 7, 7, Cadence(log=1, checkpoint=1))
    assert (result.step, result.stopped, calls, taken) == (7, None, [], [])


def test_fit_stops_on_the_time_limit_with_one_checkpoint():
    engine = Engine("cpu", torchrun=False)
    with engine.watch(time_limit_min=1e-6):
        time.sleep(0.01)
        result, calls, taken, _ = _fit(engine, 0, 100, Cadence(log=10, checkpoint=1, sample=1))
    assert result.step == 1 and "time limit" in result.stopped and taken == [0]
    assert _steps(calls, "checkpoint") == [1]  # due and stopping: one checkpoint
    assert _steps(calls, "sample") == [1]  # the grid of a sample step comes before the stop decision
    with engine.watch(time_limit_min=1e-6):
        time.sleep(0.01)
        result, calls, _, _ = _fit(engine, 3, 100, Cadence(log=10, checkpoint=50))
    assert result.step == 4 and _steps(calls, "checkpoint") == [4]  # not due, but stopping: checkpointed
    # outside engine.watch nothing stops the loop (no time limit, the signals are not caught)
    result, _, taken, _ = _fit(engine, 0, 3, Cadence())
    assert result.stopped is None and taken == [0, 1, 2]


def test_fit_asks_the_ranks_to_agree_at_every_step_or_at_log_steps_only(monkeypatch):
    engine = Engine("cpu", torchrun=False)
    asked = []
    monkeypatch.setattr(engine, "stop_reason", lambda agree=True: asked.append(agree))
    with engine.watch(None):
        _fit(engine, 0, 5, Cadence(log=2), agree_every_step=False)
        assert asked == [False, True, False, True, True]
        asked.clear()
        _fit(engine, 0, 3, Cadence(log=2))
        assert asked == [True, True, True]


def test_fit_runs_epochs_of_a_step_function_whose_data_runs_out():
    """An epoch loop: the step function raises StopIteration at the end of an epoch's data (batches of 3, 0 and 2
    steps); on_epoch runs at each boundary, the bar counts optimiser steps."""
    engine = Engine("cpu", torchrun=False)
    sizes, epochs_seen, taken = iter([3, 0, 2]), [], []
    batches = iter(range(next(sizes)))

    def step_fn(step):
        next(batches)
        taken.append(step)

    def on_epoch(epoch):
        nonlocal batches
        epochs_seen.append((epoch, len(taken)))
        batches = iter(range(next(sizes, 0)))

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    result = engine.fit(step_fn, epochs=3, on_epoch=on_epoch, bar=bar)
    assert epochs_seen == [(0, 3), (1, 3), (2, 5)] and taken == list(range(5))
    assert (result.step, result.epochs, bar.n) == (5, 3, 5)
    assert engine.fit(step_fn, epochs=0, on_epoch=on_epoch).step == 0  # no epoch: no step


def test_run_folder_writes_on_rank_0_only_each_file_in_its_place(tmp_path):
    class Rank1:
        is_main = False

    model = torch.nn.Linear(2, 2)
    for engine, root in ((None, tmp_path / "main"), (Rank1(), tmp_path / "other")):
        folder = RunFolder(root, engine, train_dir="train", resume_name="checkpoint.pt")
        with folder:
            log = folder.open_log(["loss"], total=3)
            log.row(1, {"loss": 0.5})
            folder.save_resume("test", 1, {"model": model.state_dict()})
            folder.save_weights("w.safetensors", model)
            folder.write_json("info.json", {"a": 1})
            folder.grid(1, torch.zeros(2, 3, 4, 4))
            folder.close_log()
    main = tmp_path / "main"
    assert read_log(main / "train" / "log.csv")[0]["loss"] == "0.5"
    assert RunFolder(main, train_dir="train", resume_name="checkpoint.pt").load_resume("test")["step"] == 1
    assert {p.relative_to(main).as_posix() for p in main.rglob("*") if p.is_file() and "tb" not in p.parts} == {
        ".lock", "info.json", "w.safetensors", "train/checkpoint.pt", "train/log.csv", "train/samples/step_0000001.png"}
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").rglob("*.*"))
    assert RunFolder(tmp_path / "none", resume_name="last.pt").load_resume() is None
    with pytest.raises(Exception, match="in use by pid"):
        with RunFolder(main, what="test"), RunFolder(main, what="test"):
            pass

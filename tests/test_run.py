"""labelgen.run: the run infrastructure every loop shares (resume file, RNG, lock, log, progress)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgen.errors import LabelgenError
from labelgen.run import (
    RunLock, RunLog, init_dist, load_resume, option_on, pick_device, read_log, read_progress, rng_state, save_resume,
    seed_everything, set_rng_state,
)


def _draws(gen: torch.Generator) -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=gen)))


def test_rng_state_round_trips_through_a_weights_only_resume_file(tmp_path):
    seed_everything(3)
    gen = torch.Generator().manual_seed(5)
    _draws(gen)
    np.random.randn()  # numpy's cached gaussian is part of the state
    path = tmp_path / "state.pt"
    save_resume(path, "test", 7, {"rng": [rng_state(gen)], "config": {"size": [32, 32], "lr": 1e-3, "name": None}})
    expected = [_draws(gen) for _ in range(3)]
    seed_everything(99)
    other = torch.Generator().manual_seed(1)
    state = load_resume(path, "test")
    assert state["step"] == 7 and state["config"] == {"size": [32, 32], "lr": 1e-3, "name": None}
    set_rng_state(state["rng"][0], other)
    assert [_draws(other) for _ in range(3)] == expected


def test_save_resume_refuses_objects_that_need_unpickling(tmp_path):
    with pytest.raises(TypeError, match="PosixPath"):
        save_resume(tmp_path / "s.pt", "test", 1, {"config": {"out": tmp_path}})
    assert not (tmp_path / "s.pt").exists()


def test_load_resume_never_runs_a_pickled_payload(tmp_path, plant_payload):
    marker = tmp_path / "pwned"
    path = plant_payload(tmp_path / "last.pt", marker)
    with pytest.raises(LabelgenError, match="unreadable resume state") as info:
        load_resume(path)
    assert "\n" not in str(info.value) and not marker.exists()
    torch.load(path, weights_only=False)  # the control: an unsafe load does run it
    assert marker.exists()


def test_load_resume_refuses_other_files_and_kinds(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LabelgenError, match="unreadable resume state"):
        load_resume(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(LabelgenError, match="not a labelgen resume file"):
        load_resume(tmp_path / "plain.pt")
    save_resume(tmp_path / "ddpm.pt", "ddpm", 3, {})
    with pytest.raises(LabelgenError, match="holds a ddpm run, not student"):
        load_resume(tmp_path / "ddpm.pt", "student")


def test_lock_is_exclusive_and_cleans_stale_temps(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pt.ab12cd.tmp").write_bytes(b"x" * 10)  # a save a kill interrupted
    (run / "keep.tmp").write_bytes(b"user file")  # not one of ours (not hidden): kept
    with RunLock(run, "student train"):
        assert not (run / ".last.pt.ab12cd.tmp").exists() and (run / "keep.tmp").exists()
        (run / ".log.csv.zz.tmp").write_bytes(b"")  # a live writer's temp file stays while the lock is held
        with pytest.raises(LabelgenError, match=f"in use by pid {os.getpid()}"):
            RunLock(run).acquire()
        assert (run / ".log.csv.zz.tmp").exists()
    with RunLock(run):  # released: free again
        pass


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    script = ("import sys, time\nfrom labelgen.run import RunLock\nRunLock(sys.argv[1]).acquire()\n"
              "print('locked', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(LabelgenError, match=f"in use by pid {proc.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


def test_run_log_flushes_each_row_and_is_cut_back_on_resume(tmp_path):
    log = RunLog(tmp_path, ["loss"], total=10)
    for step in range(1, 6):
        log.row(step, {"loss": 1.0 / step}, scalars={"train/loss": 1.0 / step})
    # not closed (as after kill -9): header and every row are already in the file
    assert [r["step"] for r in read_log(tmp_path / "log.csv")] == ["1", "2", "3", "4", "5"]
    assert read_progress(tmp_path / "log.csv") == (5, 10)
    log.flush()
    log.close()
    resumed = RunLog(tmp_path, ["loss"], total=10, resume_step=3)  # the checkpoint was at step 3
    assert [r["step"] for r in read_log(tmp_path / "log.csv")] == ["1", "2", "3"]
    resumed.row(4, {"loss": 0.2})
    resumed.close()
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0] == "step,total,loss" and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert any((tmp_path / "tb").iterdir())
    with pytest.raises(ValueError, match="not in"):
        RunLog(tmp_path, ["loss"], total=10, tensorboard=False).row(1, {"acc": 1})
    fresh = RunLog(tmp_path, ["loss"], total=10, tensorboard=False)  # resume_step 0: a new run
    fresh.close()
    assert read_log(tmp_path / "log.csv") == [] and read_progress(tmp_path / "log.csv") is None


def test_device_and_single_process_dist(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist = init_dist("cpu")
    assert (dist.rank, dist.world, dist.active, dist.device) == (0, 1, False, torch.device("cpu"))
    assert dist.sum(3) == 3 and dist.broadcast("x") == "x" and dist.gather(1) == [1]
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(LabelgenError, match="no CUDA GPU"):
            pick_device("cuda")


def test_speed_options_auto_is_cuda_only_and_true_anywhere_only_where_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)  # devices as values: no GPU needed
    assert [option_on(v, cuda) for v in ("auto", None, True, False)] == [True, True, True, False]
    assert [option_on(v, cpu) for v in ("auto", None, True, False)] == [False, False, False, False]
    assert [option_on(v, cpu, true_anywhere=True) for v in ("auto", True, False)] == [False, True, False]


def test_two_process_dist_sums_and_broadcasts(tmp_path):
    # each rank writes its own file: two processes printing to one pipe can interleave within a line
    script = ("import pathlib, sys\nfrom labelgen.run import init_dist\nd = init_dist('cpu')\n"
              "line = f\"{d.rank} {d.world} {d.sum(d.rank + 1)} {d.broadcast(f'from {d.rank}')} {d.gather(d.rank)}\"\n"
              "pathlib.Path(sys.argv[1], f'rank{d.rank}.txt').write_text(line)\n"
              "d.close()\n")
    (tmp_path / "job.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "job.py"), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert lines == ["0 2 3 from 0 [0, 1]", "1 2 3 from 0 [0, 1]"]


# ---------------------------------------------------------------- the training engine (labelgen.engine)
def test_seed_everything_returns_the_loops_generator():
    gen = seed_everything(7)
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(torch.rand(2), torch.rand(2, generator=torch.Generator().manual_seed(7)))  # torch's own
    assert random.random() == random.Random(7).random() and np.random.rand() == np.random.RandomState(7).rand()


def test_engine_fused_optimiser_rule_and_a_plain_kernel_state_resumed():
    from labelgen.engine import Engine, fused_optimizer

    assert fused_optimizer("cpu") and fused_optimizer(torch.device("cuda", 0)) and not fused_optimizer("meta")
    engine = Engine("cpu", torchrun=False)
    model = torch.nn.Linear(4, 3)
    plain = torch.optim.AdamW(model.parameters(), lr=0.1)  # the state of a run saved with the plain kernel
    model(torch.randn(2, 4)).sum().backward()
    plain.step()
    for cls in (torch.optim.AdamW, torch.optim.Adam):
        opt = engine.optimizer(cls, model.parameters(), lr=0.1)
        assert type(opt) is cls and opt.param_groups[0]["fused"] is True
    engine.load_optimizer(opt, plain.state_dict())
    assert opt.param_groups[0]["fused"] is True and opt.state[model.weight]["step"].item() == 1
    opt.step()  # continues on the fused kernel


def test_engine_in_one_process(monkeypatch):
    import time

    from labelgen.engine import Engine

    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun=False: one process whatever the environment says
    assert Engine("cpu", torchrun=False).world == 1
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    engine = Engine("cpu")
    x = torch.arange(6.0)
    assert engine.shard(x) is x and engine.mean(x) is x and not engine.distributed
    assert [engine.due(s, 2, 5) for s in range(1, 6)] == [False, True, False, True, True] and not engine.due(4, 0, 4)
    assert engine.stop_reason() is None
    with engine.watch(time_limit_min=1e-6):
        time.sleep(0.01)
        assert "time limit" in engine.stop_reason(agree=False)  # one process: checked at every call
    assert engine.stop_reason() is None


def test_two_process_engine_shards_averages_and_stops_together(tmp_path):
    """Two gloo ranks: rows rank::2 of one global batch; their averaged gradient is the whole batch's; a stop
    seen by rank 1 only stops both at the same (agreed) call, and not at calls that do not agree."""
    script = (
        "import pathlib, sys, torch\nfrom labelgen.engine import Engine\n"
        "e = Engine('cpu')\ntorch.manual_seed(0)\nw = torch.nn.Linear(3, 1)\nx = torch.randn(8, 3)\n"
        "w(e.shard(x)).square().mean().backward()\ne.average_gradients(w.parameters())\n"
        "full = torch.nn.Linear(3, 1)\nfull.load_state_dict(w.state_dict())\nfull(x).square().mean().backward()\n"
        "same = all(torch.allclose(a.grad, b.grad, atol=1e-6) for a, b in zip(w.parameters(), full.parameters()))\n"
        "with e.watch(None) as stop:\n"
        "    stop.signal = 'SIGTERM' if e.rank == 1 else None\n"
        "    quiet, agreed = e.stop_reason(agree=False), e.stop_reason()\n"
        "rows = e.shard(torch.arange(8)).tolist()\n"
        "pathlib.Path(sys.argv[1], f'rank{e.rank}.txt').write_text(f'{rows} {same} {quiet} {agreed}')\ne.close()\n")
    (tmp_path / "job.py").write_text(script)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "job.py"), str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)] == [
        "[0, 2, 4, 6] True None another torchrun process was stopped (signal or time limit)",
        "[1, 3, 5, 7] True None received SIGTERM"]

"""One CLI: the same option names for the same things on every command (--device, --ddim-steps, --quiet), each
with one meaning, and the options reach the work they name."""
from __future__ import annotations

import json
import tarfile

import click
import pytest
import torch

from labelgen.cli import cli as labelgen_cli
from labelgen.student.cli import cli as student_cli

# every command that computes on tensors: (program's click group, command path)
TENSOR_COMMANDS = [
    (labelgen_cli, ["sample"]), (labelgen_cli, ["import"]), (labelgen_cli, ["train-heads"]),
    (labelgen_cli, ["tune-features"]), (labelgen_cli, ["synthesize"]), (labelgen_cli, ["features"]),
    (labelgen_cli, ["train-generator"]), (labelgen_cli, ["demo"]),
    (student_cli, ["train"]), (student_cli, ["eval"]), (student_cli, ["predict"]), (student_cli, ["pseudo-label"]),
]
SAMPLING_COMMANDS = [(labelgen_cli, ["init"]), (labelgen_cli, ["sample"]), (labelgen_cli, ["synthesize"]),
                     (labelgen_cli, ["demo"])]


def _command(group: click.Group, path: list[str]) -> click.Command:
    command = group
    for name in path:
        command = command.get_command(click.Context(command), name)
        assert command is not None, f"{' '.join(path)} not found"
    return command


def _option(command: click.Command, name: str) -> click.Option | None:
    return next((p for p in command.params if isinstance(p, click.Option) and name in p.opts), None)


@pytest.mark.parametrize("group, path", TENSOR_COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_tensor_command_takes_device(group, path):
    option = _option(_command(group, path), "--device")
    assert option is not None, f"{' '.join(path)} has no --device"
    assert list(option.type.choices) == ["auto", "cpu", "cuda"]  # the one option (labelgen.cli_types.device_choice)


@pytest.mark.parametrize("group, path", SAMPLING_COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_sampling_command_takes_ddim_steps(group, path):
    assert _option(_command(group, path), "--ddim-steps") is not None


def _leaf_commands(group: click.Group, path=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_quiet_on_every_command():
    commands = [*_leaf_commands(labelgen_cli), *_leaf_commands(student_cli)]
    assert len(commands) > 15
    missing = [" ".join(path) for path, command in commands if _option(command, "--quiet") is None]
    assert not missing, missing


def test_quiet_hides_the_progress_bar_for_that_command_only(monkeypatch):
    """--quiet (added by with_quiet to each command) disables labelgen.run.progress for that command only."""
    from labelgen.cli import run_click, with_quiet
    from labelgen.run import progress

    monkeypatch.delenv("LABELGEN_QUIET", raising=False)
    seen = []
    group = with_quiet(click.Group("g", commands=[click.Command("probe", callback=lambda: seen.append(
        progress(3).disable))]))
    run_click(group, ["probe", "--quiet"])
    run_click(group, ["probe"])
    assert seen == [True, False]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["student", "eval", "--checkpoint", "{t}/run", "--data", "{t}/data", "--device", "cuda"],
    ["student", "predict", "--checkpoint", "{t}/run", "--images", "{t}/data", "--out", "{t}/o", "--device", "cuda"],
    ["labelgen", "sample", "-w", "{t}/ws", "--n", "1", "--device", "cuda"],
    ["labelgen", "demo", "-w", "{t}/ws", "--out", "{t}/demo", "--n", "1", "--device", "cuda"],
])
def test_device_cuda_without_a_gpu_is_one_line(argv, tmp_path, capsys, monkeypatch):
    """--device cuda is accepted by the parser and refused in one line where there is no CUDA (before any work)."""
    from labelgen.cli import main as labelgen_main
    from labelgen.student.cli import main as student_main
    from labelgen.student.testing import make_folder
    from teacher_fakes import annotated_workspace

    annotated_workspace(tmp_path / "ws")
    make_folder(tmp_path / "data", 2, (32, 32))
    if argv[0] == "student":  # a real (tiny) student run folder
        from labelgen.student.train import TrainOptions, train

        train(TrainOptions(mode="supervised", data=str(tmp_path / "data"), out=str(tmp_path / "run"),
                           image_size=(32, 32), batch_size=2, max_steps=1, workers=0, progress=False))
    monkeypatch.setenv("LABELGEN_PLUGINS", "teacher_fakes")
    capsys.readouterr()
    main = student_main if argv[0] == "student" else labelgen_main
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(t=tmp_path) for a in argv[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "cuda" in err[0] and "Traceback" not in err[0], err


def test_student_eval_device_cpu_scores(tmp_path, capsys):
    from labelgen.student.cli import main
    from labelgen.student.testing import make_folder
    from labelgen.student.train import TrainOptions, train

    make_folder(tmp_path / "data", 2, (32, 32))
    train(TrainOptions(mode="supervised", data=str(tmp_path / "data"), out=str(tmp_path / "run"), image_size=(32, 32),
                       batch_size=2, max_steps=1, workers=0, progress=False))
    capsys.readouterr()
    assert _exit_code(main, ["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
                             "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "on cpu" in out and "mIoU:" in out, out


def test_synthesize_ddim_steps_reaches_the_samples(tmp_path, capsys):
    """--ddim-steps on synthesize (no workspace: the embedded default DDPM) is the samples' recipe, and in the plan."""
    from labelgen.cli import main

    out = tmp_path / "syn"
    code = _exit_code(main, ["synthesize", "--n", "1", "--shard-size", "1", "--ddim-steps", "1", "--out", str(out),
                             "--device", "cpu", "-w", str(_default_copy(tmp_path))])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "synthesis.json").read_text())["ddim_steps"] == 1
    with tarfile.open(out / "000000.tar") as tar:
        meta = json.load(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))))
    assert meta["recipe"]["ddim_steps"] == 1


def test_ddim_steps_refused_in_one_line_by_a_gan_teacher(tmp_path, capsys):
    """A sampling option the backend does not take (DDIM steps of the real pretrained DCGAN) is one line, exit 2."""
    from labelgen.cli import main

    ws = tmp_path / "ws"
    assert _exit_code(main, ["init", str(ws), "--generator", "dcgan", "--classes", "background,face"]) == 0
    capsys.readouterr()
    assert _exit_code(main, ["sample", "-w", str(ws), "--n", "1", "--ddim-steps", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ddim_steps" in err[0] and "dcgan" in err[0], err
    assert not list((ws / "annotations").glob("*.png"))


def _exit_code(main, argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def _default_copy(tmp_path):
    from labelgen.default_teacher import copy_default_workspace

    return copy_default_workspace(tmp_path / "default").root


def test_seed_is_one_name_on_every_command():
    """The seed of a run or of the first sample is --seed everywhere (sample's --seed-start and synthesize's
    --seed-base stay as aliases of it)."""
    seeded = {"sample": "--seed-start", "synthesize": "--seed-base", "train-heads": None, "tune-features": None,
              "train-generator": None}
    for name, alias in seeded.items():
        option = _option(_command(labelgen_cli, [name]), "--seed")
        assert option is not None, name
        assert option.opts[0] == "--seed" and (alias is None or alias in option.opts), option.opts
    assert _option(_command(student_cli, ["train"]), "--seed") is not None

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
    ("labelgen", {"data", "init", "sample", "import", "train-heads", "tune-features", "synthesize", "features",
                  "train-generator", "app", "demo"}),
    ("student", {"train", "eval", "predict", "pseudo-label", "export"}),
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


# ------------------------------------------------------------------ defaults stated once
class _Captured(Exception):
    """Raised by a stand-in for a command's worker once it has the dataclass the command filled."""


def _capture(monkeypatch, module, name: str, index: int | str):
    """Replace ``module.name`` by a stand-in that records its argument ``index`` (position or keyword)."""
    seen = {}

    def stand_in(*args, **kwargs):
        seen["value"] = kwargs[index] if isinstance(index, str) else args[index]
        raise _Captured

    monkeypatch.setattr(module, name, stand_in)
    return seen


def _invoke(group, argv: list[str]) -> None:
    with pytest.raises(_Captured):
        group.main(args=argv, standalone_mode=False)


def test_student_train_defaults_are_the_train_options_defaults(monkeypatch, tmp_path):
    """With only the required options, `student train` fills exactly TrainOptions' own defaults."""
    import labelgen.student.train as student_train
    from labelgen.student.cli import cli

    seen = _capture(monkeypatch, student_train, "train", 0)
    _invoke(cli, ["train", "--mode", "supervised", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    assert seen["value"] == student_train.TrainOptions(mode="supervised", data=str(tmp_path / "d"),
                                                        out=str(tmp_path / "o"))
    # and every option that names a TrainOptions field shows that field's default (converted for the CLI)
    from labelgen.cli_defaults import defaults_of

    defaults = defaults_of(student_train.TrainOptions)  # default_factory fields too (workers: sized from the machine)
    command = cli.commands["train"]
    shown = {p.name: p.default for p in command.params if p.name in defaults and not p.required}
    assert len(shown) >= 30
    for name, value in shown.items():
        expected = defaults[name]
        if name == "image_size":
            expected = "x".join(map(str, expected))
        assert value == expected, name


def test_student_arch_choices_are_smps_registry():
    import segmentation_models_pytorch as smp

    from labelgen.student.cli import cli

    arch = next(p for p in cli.commands["train"].params if p.name == "arch")
    assert list(arch.type.choices) == list(smp.MODEL_ARCHITECTURES_MAPPING)
    assert {"segformer", "dpt", "upernet"} <= set(arch.type.choices)
    mode = next(p for p in cli.commands["train"].params if p.name == "mode")
    from labelgen.student.train import MODES

    assert tuple(mode.type.choices) == MODES


def test_teacher_choices_come_from_the_registries():
    from labelgen.cli import cli
    from labelgen.generators import BACKENDS
    from labelgen.heads import HEADS
    from labelgen.training.train_generator import trainers

    def param(command, name):
        return next(p for p in cli.commands[command].params if p.name == name)

    assert list(param("init", "head_type").type.choices) == list(HEADS)
    assert all(name in param("init", "backend").help for name in BACKENDS)
    assert list(param("train-generator", "backend").type.choices) == list(trainers())


def test_train_heads_and_synthesize_defaults_are_their_configs(monkeypatch, tmp_path):
    import labelgen.heads.train as heads_train
    import labelgen.synthesis as synthesis
    from labelgen import teacher_cli
    from labelgen.cli import cli

    class Workspace:  # what the commands ask of a workspace before the stage gets its teacher
        feature_store = None

        def head_settings(self, head_type=None):
            return tmp_path, {"type": "pixel-mlp"}

        def teacher(self, **options):
            return None

    monkeypatch.setattr(teacher_cli, "_open", lambda workspace_dir: Workspace())
    monkeypatch.setattr(teacher_cli, "_generator_to", lambda ws, device: "cpu")
    seen = _capture(monkeypatch, heads_train, "train_heads", 2)
    _invoke(cli, ["train-heads", "-w", str(tmp_path)])
    assert seen["value"] == heads_train.TrainConfig()

    seen = _capture(monkeypatch, synthesis, "synthesize", 1)
    _invoke(cli, ["synthesize", "-w", str(tmp_path), "--n", "7", "--out", str(tmp_path / "s")])
    assert seen["value"] == synthesis.SynthesisConfig(n=7)  # --n has no default: it is required


def test_init_defaults_are_the_workspace_and_head_defaults(monkeypatch, tmp_path):
    import inspect

    import labelgen.workspace as workspace
    from labelgen.cli import cli
    from labelgen.heads import HEADS

    seen = _capture(monkeypatch, workspace, "create_workspace", 4)
    _invoke(cli, ["init", str(tmp_path / "w"), "--generator", "dcgan", "--classes", "a,b"])
    config = workspace.WorkspaceConfig(backend="dcgan", checkpoint=None, classes=[], resolution=[1, 1])
    head = seen["value"]
    assert head["type"] == config.head["type"]
    assert head["ensemble"] == inspect.signature(HEADS[head["type"]]).parameters["ensemble"].default
    for head_type in HEADS:  # the other head types get their own constructor's K
        seen = _capture(monkeypatch, workspace, "create_workspace", 4)
        _invoke(cli, ["init", str(tmp_path / "w"), "--generator", "dcgan", "--classes", "a,b", "--head", head_type])
        assert seen["value"]["ensemble"] == inspect.signature(HEADS[head_type]).parameters["ensemble"].default
    seen = _capture(monkeypatch, workspace, "create_workspace", 5)
    _invoke(cli, ["init", str(tmp_path / "w"), "--generator", "dcgan", "--classes", "a,b"])
    assert seen["value"] == config.timesteps


def test_train_generator_passes_only_given_options_and_shows_the_trainers_defaults(monkeypatch, tmp_path):
    import labelgen.training.train_generator as tg
    from labelgen.cli import cli
    from labelgen.cli_defaults import defaults_of

    seen = {}

    def stand_in(backend, data, out, **options):
        seen.update(backend=backend, options=options)
        raise _Captured

    monkeypatch.setattr(tg, "train_generator", stand_in)
    _invoke(cli, ["train-generator", "--data", str(tmp_path), "--out", str(tmp_path / "g")])
    assert seen["backend"] == "ddpm" and set(seen["options"]) == {"echo", "show_progress"}
    help_text = {p.name: p.help for p in cli.commands["train-generator"].params}
    ddpm = defaults_of(tg.DDPMTrainConfig)
    from labelgen.training.stylegan2_trainer import StyleGAN2TrainConfig

    sg2 = defaults_of(StyleGAN2TrainConfig)
    assert f"ddpm {ddpm['warmup']}, stylegan2 {sg2['warmup']}]" in help_text["warmup"]
    assert f"ddpm {ddpm['lr']:g}, stylegan2 {sg2['lr']:g}]" in help_text["lr"]
    assert ",".join(map(str, tg.DDPM_ARCH_DEFAULTS["channels"])) in help_text["channels"]

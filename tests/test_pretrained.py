"""One save/load shape (labelgen.pretrained) for everything with weights: every built-in generator backend (tiny
configs, nothing downloaded), every head type and every student architecture goes save_pretrained -> from_pretrained
with the same config and the same outputs; a weights file holding a tensor of another shape is the one
WeightsDoNotFit line naming the file, the tensor and both shapes (exit 2 through the commands that load it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import labelgen  # noqa: F401  (installs the torchvision shim before diffusers / smp)
from labelgen.generators import BACKENDS, Generator
from labelgen.heads import HEADS, TaskHead, create_head
from labelgen.pretrained import WeightsDoNotFit
from labelgen.student.models import Student
from labelgen.student.testing import CLASSES
from test_generators import TINY, _make
from test_student import _registered_students, _smallest_fit

torch.set_num_threads(1)
LEVELS = [(5, 4), (3, 8), (2, 16)]  # the heads' feature levels: (channels, side)

CASES = ([("generator", b, None) for b in sorted(BACKENDS)] + [("head", h, None) for h in sorted(HEADS)]
         + [("student", arch, encoder) for arch, encoder in _registered_students()])


def _build(kind: str, name: str, encoder: str | None):
    """(a new model, the base class whose from_pretrained reads any of its kind, its outputs as a function)."""
    torch.manual_seed(0)
    if kind == "generator":
        options = TINY[name][1]
        return _make(name), Generator, lambda g: [*(o := g.sample([1, 2], **options)).features, o.images]
    if kind == "head":
        levels = [torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(c)) for c, s in LEVELS]
        head = create_head(name, [c for c, _ in LEVELS], 4, (16, 16), ensemble=2).eval()
        return head, TaskHead, lambda h: [h(levels)]
    fit, size = _smallest_fit(name)
    student = Student(name, encoder or fit, CLASSES.to_json()["classes"], list(size), train={"lr": 0.001}).eval()
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    return student, Student, lambda s: [s(images)]


def _weights_file(folder: Path) -> Path:
    """The file holding the network's weights (diffusers layouts: the UNet's)."""
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    return unet if unet.is_file() else next(p for p in folder.glob("*.safetensors") if "prompt" not in p.name)


def _reshape_one_tensor(path: Path) -> tuple[str, list[int], list[int]]:
    """Write ``path`` again with one tensor one row longer: (its name, the shape now in the file, the right one)."""
    tensors = load_file(str(path))
    name = sorted(k for k, v in tensors.items() if v.ndim and v.is_floating_point())[0]
    right = list(tensors[name].shape)
    tensors[name] = torch.zeros(right[0] + 1, *right[1:])
    save_file(tensors, str(path))
    return name, [right[0] + 1, *right[1:]], right


def test_every_backend_head_type_and_student_architecture_is_covered():
    assert sorted(TINY) == sorted(BACKENDS)  # a new backend needs its tiny configuration in test_generators.TINY
    assert {n for k, n, _ in CASES if k == "head"} == set(HEADS) and len(CASES) > len(BACKENDS) + len(HEADS) + 10


@torch.no_grad()
@pytest.mark.parametrize("kind, name, encoder", CASES)
def test_save_pretrained_then_from_pretrained_gives_the_same_model(kind, name, encoder, tmp_path):
    model, base, outputs = _build(kind, name, encoder)
    model.save_pretrained(tmp_path / "m")
    for cls in (base, type(model)):  # the base builds the kind the config names; the class itself, itself
        loaded = cls.from_pretrained(tmp_path / "m")
        assert type(loaded) is type(model) and not loaded.training
        assert loaded.config == model.config
        for got, expected in zip(outputs(loaded), outputs(model), strict=True):
            assert torch.equal(got, expected)


@pytest.mark.parametrize("kind, name, encoder", CASES)
def test_weights_of_another_shape_are_one_error_naming_file_tensor_and_shapes(kind, name, encoder, tmp_path):
    model, base, _ = _build(kind, name, encoder)
    model.save_pretrained(tmp_path / "m")
    weights = _weights_file(tmp_path / "m")
    tensor, in_file, in_model = _reshape_one_tensor(weights)
    with pytest.raises(WeightsDoNotFit) as error:
        base.from_pretrained(tmp_path / "m")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{weights}: these weights do not fit")
    assert f"{tensor} is {in_file} in the file, {in_model} in the model" in message


def test_a_config_the_constructor_cannot_take_is_one_line_naming_the_file(tmp_path):
    import json
    import re

    from labelgen.errors import LabelgenError

    _make("dcgan").save_pretrained(tmp_path / "g")
    path = tmp_path / "g" / "generator_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "ngff": 4}))
    with pytest.raises(LabelgenError, match=f"^{re.escape(str(path))}: not the arguments of the generator .*'ngff'"):
        Generator.from_pretrained(tmp_path / "g")
    path.write_text(json.dumps({"nz": 16}))
    with pytest.raises(LabelgenError, match=f"^{re.escape(str(path))}: no 'backend' \\(which generator it holds\\)"):
        Generator.from_pretrained(tmp_path / "g")


@torch.no_grad()
def test_folders_written_before_the_one_shape_still_load(tmp_path):
    """The files as the writers before labelgen.pretrained wrote them: a generator config listed by hand (with the
    machine options older folders always held), a run folder's asdict(StudentConfig) beside a bare smp state dict."""
    import json
    from dataclasses import asdict

    from labelgen.student.models import StudentConfig, create_student

    gen = _make("dcgan")
    (tmp_path / "g").mkdir()
    save_file(gen.state_dict(), str(tmp_path / "g" / "generator.safetensors"))
    (tmp_path / "g" / "generator_config.json").write_text(json.dumps(
        {"backend": "dcgan", "nz": 16, "ngf": 8, "nc": 3, "feature_layers": None, "truncation": 1.0, "bf16": False},
        indent=2))
    loaded = Generator.from_pretrained(tmp_path / "g")
    assert torch.equal(loaded.sample([3]).images, gen.sample([3]).images)

    net = create_student("fpn", "resnet18", len(CLASSES)).eval()
    (tmp_path / "run").mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "run" / "model.safetensors"))
    config = StudentConfig("fpn", "resnet18", CLASSES.to_json()["classes"], [32, 32], train={"lr": 0.001})
    (tmp_path / "run" / "student_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    student = Student.from_pretrained(tmp_path / "run")
    assert student.student_config == config
    images = torch.randn(1, 3, 32, 32)
    assert torch.equal(student(images), net(images))


def _broken_generator_folder(root: Path) -> tuple[Path, str]:
    folder = root / "gen"
    _make("dcgan").save_pretrained(folder)
    tensor, in_file, in_model = _reshape_one_tensor(folder / "generator.safetensors")
    return folder, f"{tensor} is {in_file} in the file, {in_model} in the model"


def test_cli_init_with_a_generator_whose_weights_do_not_fit_exits_2(tmp_path, capsys, monkeypatch):
    from labelgen.cli import main

    monkeypatch.setenv("LABELGEN_WORKSPACE", "")
    folder, names = _broken_generator_folder(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["init", str(tmp_path / "w"), "--generator", "dcgan", "--checkpoint", str(folder), "--classes", "a,b"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {folder / 'generator.safetensors'}: these weights do not fit") and names in err


def test_cli_synthesize_with_a_head_whose_weights_do_not_fit_exits_2(tmp_path, capsys, monkeypatch):
    from labelgen.cli import main
    from labelgen.workspace import Workspace

    monkeypatch.setenv("LABELGEN_WORKSPACE", "")
    root = tmp_path / "w"
    main(["init", str(root), "--generator", "teacher_fakes:FakeGAN", "--classes", "background,disc,bar",
          "--head", "conv"])
    ws = Workspace(root)
    head = create_head("conv", ws.head_in_channels, len(ws.classes), ws.resolution)
    head.save_pretrained(ws.heads_dir, extra={"generator": ws.generator_id(), "feature_layers": ws.layer_indices})
    tensor, in_file, in_model = _reshape_one_tensor(ws.heads_dir / "head.safetensors")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["synthesize", "-w", str(root), "--n", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {ws.heads_dir / 'head.safetensors'}: these weights do not fit the conv head")
    assert f"{tensor} is {in_file} in the file, {in_model} in the model" in err


def test_cli_student_eval_with_weights_that_do_not_fit_exits_2(tmp_path, capsys):
    from labelgen.student.cli import main
    from labelgen.student.testing import make_folder

    run = tmp_path / "run"
    Student("unet", "resnet18", CLASSES.to_json()["classes"], [32, 32]).save_pretrained(run)
    tensor, in_file, in_model = _reshape_one_tensor(run / "model.safetensors")
    data = make_folder(tmp_path / "data", n=2)
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--checkpoint", str(run), "--data", str(data)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {run / 'model.safetensors'}: these weights do not fit the unet/resnet18 student")
    assert f"{tensor} is {in_file} in the file, {in_model} in the model" in err

"""`student export --onnx`: uint8 RGB in at any size, normalisation inside, metadata; run with onnxruntime
on sizes other than the training size."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from labelgen.student.cli import main
from labelgen.student.models import StudentConfig, create_student, save_student
from labelgen.student.testing import CLASSES


def _run(root, arch: str, size=(64, 64)):
    torch.manual_seed(0)
    run = root / arch
    model = create_student(arch, "resnet18", len(CLASSES)).eval()
    save_student(run, model, StudentConfig(arch, "resnet18", CLASSES.to_json()["classes"], list(size)))
    return run, model


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference(model, image: np.ndarray) -> np.ndarray:
    """The network on the normalised image at its own size (sides multiples of 32), computed here."""
    x = (image.astype(np.float32) / 255 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()


def _export(run, path, capsys) -> float:
    try:
        main(["export", "--checkpoint", str(run), "--onnx", str(path)])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert f"wrote {path}" in out
    return float(out.strip().rsplit(":", 1)[1])


def test_onnx_takes_uint8_rgb_at_any_size_with_metadata(tmp_path, capsys):
    import onnxruntime as ort

    run, model = _run(tmp_path, "unet")
    path = tmp_path / "s.onnx"
    assert _export(run, path, capsys) < 1e-3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(uint8)", ["batch", "height", "width", 3])
    assert (outp.name, outp.shape) == ("logits", ["batch", len(CLASSES), "height", "width"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == list(CLASSES.names)
    assert [tuple(c) for c in json.loads(meta["colours"])] == list(CLASSES.colours)
    assert json.loads(meta["image_size"]) == [64, 64] and meta["input_format"] == "uint8 RGB NHWC"
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)  # trained at 64x64
    got = session.run(None, {"image": image})[0]
    assert got.shape == (1, len(CLASSES), 128, 128)
    assert np.abs(got - _reference(model, image)).max() < 1e-3
    odd = rng.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)  # not a multiple of 32: unet takes it as it is
    got = session.run(None, {"image": odd})[0]
    assert got.shape == (2, len(CLASSES), 50, 70) and np.abs(got - _reference(model, odd)).max() < 1e-3


def test_onnx_pads_inside_the_graph_for_architectures_that_need_a_multiple(tmp_path, capsys):
    import onnxruntime as ort

    run, model = _run(tmp_path, "fpn")
    path = tmp_path / "fpn.onnx"
    assert _export(run, path, capsys) < 1e-3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    odd = np.random.default_rng(1).integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
    got = session.run(None, {"image": odd})[0]
    assert got.shape == (1, len(CLASSES), 50, 70)
    # the same as the network on the image padded (bottom/right) to 64x96 with the mean colour, cropped
    padded = np.empty((1, 64, 96, 3), np.uint8)
    padded[:] = np.round(np.array([0.485, 0.456, 0.406]) * 255)  # ~0 after normalisation, as the graph pads
    padded[:, :50, :70] = odd
    assert np.abs(got - _reference(model, padded)[:, :, :50, :70]).max() < 0.05

"""`student export --onnx`: uint8 RGB in at any size, predict's resizing and normalisation inside, metadata;
run with onnxruntime on sizes other than the training size and compared with `student predict`."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from labelgen.student.cli import main
from labelgen.student.models import Student, create_student
from labelgen.student.testing import CLASSES


def _run(root, arch: str, size=(64, 64)):
    torch.manual_seed(0)
    run = root / arch
    model = create_student(arch, "resnet18", len(CLASSES)).eval()
    Student(arch, "resnet18", CLASSES.to_json()["classes"], list(size), _net=model).save_pretrained(run)
    return run, model


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _predict_logits(model, run, images: np.ndarray) -> np.ndarray:
    """`student predict`'s class scores for each image, at the image's own size (before its argmax)."""
    from labelgen.imaging import resize_image
    from labelgen.student.evaluate import student_scores
    from labelgen.student.models import Student

    config = Student.from_pretrained(run).student_config
    return np.concatenate([resize_image(student_scores(model, config, im), im.shape[:2]).numpy() for im in images])


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
    assert "resized to image_size inside" in meta["resize"]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)  # trained at 64x64: shrunk inside (area)
    got = session.run(None, {"image": image})[0]
    assert got.shape == (1, len(CLASSES), 128, 128)
    assert np.abs(got - _predict_logits(model, run, image)).max() < 1e-3
    odd = rng.integers(0, 256, (2, 50, 70, 3), dtype=np.uint8)  # not a multiple of 32; enlarged inside (bicubic)
    got = session.run(None, {"image": odd})[0]
    assert got.shape == (2, len(CLASSES), 50, 70) and np.abs(got - _predict_logits(model, run, odd)).max() < 1e-3


def test_onnx_agrees_with_student_predict_at_the_photos_own_size(tmp_path, capsys, ccp_mini):
    """A photo at its own size and at two other sizes (none the training size): the graph's argmax is
    `student predict`'s on >= 99 % of the pixels (fpn: a network that needs sides divisible by 32)."""
    import onnxruntime as ort
    from PIL import Image

    from labelgen.student.evaluate import predict_image
    from labelgen.student.models import Student

    run, model = _run(tmp_path, "fpn")
    path = tmp_path / "fpn.onnx"
    assert _export(run, path, capsys) < 1e-3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    config = Student.from_pretrained(run).student_config
    photo = Image.open(ccp_mini / "photos" / "0002.jpg").convert("RGB")  # 55x83 (WxH)
    for wh in [photo.size, (110, 166), (28, 40)]:  # one side up and one down; both down; both up
        image = np.asarray(photo.resize(wh, Image.Resampling.BICUBIC))
        got = session.run(None, {"image": image[None]})[0][0]
        assert got.shape == (len(CLASSES), wh[1], wh[0])
        predicted = predict_image(model, config, image)
        assert len(np.unique(predicted)) > 1  # not a constant map: agreement means something
        assert (got.argmax(0) == predicted).mean() >= 0.99, wh


def test_graph_resize_is_the_projects_resize_rule():
    """The graph's resize (tensor operations) gives labelgen/imaging.py's images and maps: uint8 images
    exactly (one level apart at most where both sides shrink: Pillow's pass order), float maps to rounding."""
    from labelgen.imaging import resize_image
    from labelgen.student.onnx_export import resize_float, resize_uint8

    rng = np.random.default_rng(0)
    for (h, w), size in [((83, 55), (64, 64)), ((40, 28), (64, 64)), ((64, 64), (83, 55)), ((30, 70), (64, 96)),
                         ((166, 110), (64, 64)), ((64, 64), (64, 64)), ((7, 90), (64, 32))]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = resize_uint8(torch.from_numpy(image).permute(2, 0, 1)[None].double(), size)[0].permute(1, 2, 0).numpy()
        gap = np.abs(got - resize_image(image, size)).max()
        assert gap <= (1 if size[0] < h and size[1] < w else 0), ((h, w), size, gap)
        maps = torch.from_numpy(rng.standard_normal((1, 4, h, w)).astype(np.float32))
        assert torch.allclose(resize_float(maps, size), resize_image(maps, size), atol=1e-5), ((h, w), size)

"""Diffusion sampling speed options on CPU: compile falls back cleanly, static-shape padding changes no image,
auto/explicit bf16 / channels_last / compile, and saved folders do not carry the machine options."""
from __future__ import annotations

import json

import pytest
import torch

import labelgen  # noqa: F401  (installs the torchvision shim before diffusers)
from labelgen.errors import LabelgenError
from labelgen.generators import from_checkpoint
from labelgen.teacher import SAMPLING_ONLY_OPTIONS, generator_identity
from test_generators import _make

torch.set_num_threads(1)
SEEDS = [3, 1, 4, 1_000_005, 9]  # 5 rows with max_batch 2: micro-batches of 2, 2 and 1 (padded when compiled)


def _eager_sample(**options):
    g = _make("ddpm", max_batch=2, compile=False, **options)
    return g, g.sample(SEEDS, ddim_steps=3)


def test_compile_failure_falls_back_to_eager_once_with_one_warning(monkeypatch, capsys):
    _, eager = _eager_sample()
    calls = []

    def failing_compile(fn, **kwargs):
        calls.append(kwargs)

        def compiled(*args):
            raise RuntimeError("no C++ compiler\nsecond line")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    g = _make("ddpm", max_batch=2, compile=True)
    out = g.sample(SEEDS, ddim_steps=3)
    again = g.sample(SEEDS[:2], ddim_steps=3)
    assert len(calls) == 1 and calls[0]["dynamic"] is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ddpm: torch.compile of the UNet failed (RuntimeError: no C++")
    assert torch.equal(out.images, eager.images)
    for a, b in zip(out.features, eager.features):
        assert torch.equal(a, b)
    assert torch.equal(again.images, eager.images[:2])


def test_compile_that_raises_when_created_falls_back_too(monkeypatch, capsys):
    _, eager = _eager_sample()

    def unsupported(fn, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")
    monkeypatch.setattr(torch, "compile", unsupported)
    out = _make("ddpm", max_batch=2, compile=True).sample(SEEDS, ddim_steps=3)
    assert torch.equal(out.images, eager.images)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sampling with the eager UNet" in err[0]


def test_static_shape_padding_gives_the_unpadded_images(monkeypatch):
    """A stand-in compiler that records batch shapes: every call has max_batch rows, images equal eager's."""
    _, eager = _eager_sample()
    shapes = []

    def recording_compile(fn, **kwargs):
        def compiled(x, t):
            shapes.append((x.shape[0], t.shape[0]))
            return fn(x, t)
        return compiled

    monkeypatch.setattr(torch, "compile", recording_compile)
    out = _make("ddpm", max_batch=2, compile=True).sample(SEEDS, ddim_steps=3)
    assert shapes and set(shapes) == {(2, 2)} and len(shapes) == 3 * 3  # 3 steps x 3 micro-batches
    torch.testing.assert_close(out.images, eager.images, atol=1 / 127.5 + 1e-6, rtol=0)  # at most one uint8 level
    assert (out.images != eager.images).float().mean() < 0.01


def test_auto_is_off_on_cpu_and_options_are_sampling_only(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("auto must not compile on CPU"))
    g = _make("ddpm", max_batch=2)
    assert g.config["bf16"] == g.config["channels_last"] == g.config["compile"] == "auto"
    cpu = torch.device("cpu")
    assert not any(g._option_on(k, cpu) for k in ("bf16", "channels_last", "compile"))
    cuda = torch.device("cuda")
    assert all(g._option_on(k, cuda) for k in ("bf16", "channels_last", "compile"))
    off = _make("ddpm", bf16=False, channels_last="false", compile="off")
    assert not any(off._option_on(k, cuda) for k in ("bf16", "channels_last", "compile"))
    assert _make("ddpm", bf16=True)._option_on("bf16", cuda) and not _make("ddpm", bf16=True)._option_on("bf16", cpu)
    assert _make("ddpm", compile=True)._option_on("compile", cpu)  # explicit: try it anywhere
    with pytest.raises(LabelgenError, match="compile: auto, true or false"):
        _make("ddpm", compile="sometimes")
    g.sample([1], ddim_steps=2)
    assert {"bf16", "channels_last", "compile"} <= SAMPLING_ONLY_OPTIONS
    assert generator_identity("ddpm", "w", {"compile": True, "bf16": False}) == generator_identity("ddpm", "w", {})


def test_saved_folders_do_not_carry_machine_options(tmp_path):
    """Folders written before "auto" held "bf16": false whether chosen or not: read as auto; new ones omit them."""
    g = _make("ddpm", bf16=True, compile=False)
    g.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "generator_config.json").read_text())
    assert not {"bf16", "channels_last", "compile"} & set(saved)
    saved.update(bf16=False, channels_last=False)  # an older folder
    (tmp_path / "m" / "generator_config.json").write_text(json.dumps(saved))
    loaded = from_checkpoint("ddpm", tmp_path / "m")
    assert loaded.config["bf16"] == loaded.config["channels_last"] == "auto"
    assert from_checkpoint("ddpm", tmp_path / "m", bf16=False).config["bf16"] is False  # a workspace's choice

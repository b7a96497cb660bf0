"""The student on real teacher output: a tiny DCGAN workspace -> `labelgen synthesize --soft-labels
uint8` shards -> `student train --mode dreamteacher --teacher W` (recipe features from the real
backend + the synthesis soft labels) -> `student eval` on real-format data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import labelgen  # noqa: F401


def _run(main, *args) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), e.code


def test_dreamteacher_on_dcgan_synthesis(tmp_path, capsys):
    from labelgen.cli import main as labelgen_main
    from labelgen.data.shards import ShardReader, soft_probabilities
    from labelgen.generators import create_generator
    from labelgen.student.cli import main as student_main
    from labelgen.student.data import ShardSource
    from labelgen.workspace import Workspace

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        create_generator("dcgan", ngf=8, nz=16).save_pretrained(tmp_path / "g")
        w = tmp_path / "w"
        _run(labelgen_main, "init", w, "--generator", "dcgan", "--checkpoint", tmp_path / "g", "--classes", "dark,bright",
             "--head", "conv")
        _run(labelgen_main, "sample", "-w", w, "--n", "2")
        ws = Workspace(w)
        for annotation_id in ws.annotation_ids():
            ws.save_mask(annotation_id, (ws.read_annotation(annotation_id)[0].mean(2) > 127).astype(np.uint8))
        _run(labelgen_main, "train-heads", "-w", w, "--epochs", "2")
        shards = tmp_path / "shards"
        _run(labelgen_main, "synthesize", "-w", w, "--n", "8", "--shard-size", "4", "--out", shards,
             "--soft-labels", "uint8")

        # the soft labels the synthesis wrote decode to per-pixel distributions whose argmax is the mask
        sample = next(iter(ShardReader(shards)))
        assert sample.soft is not None and sample.soft.shape == (2, *sample.mask.shape)
        soft = soft_probabilities(sample.soft)  # [2, H, W]
        assert np.allclose(soft.sum(0), 1, atol=1e-5)
        assert (soft.argmax(0) == sample.mask).mean() > 0.99
        assert ShardSource(shards).soft_fraction == 1.0

        run = tmp_path / "run"
        _run(student_main, "train", "--mode", "dreamteacher", "--data", shards, "--out", run, "--teacher", w,
             "--image-size", "64x64", "--batch-size", "4", "--max-steps", "3", "--no-progress")
        out = capsys.readouterr().out
        assert "feature levels: teacher (64, 4, 4)" in out and "trained 3 steps" in out
        assert (run / "model.safetensors").is_file() and (run / "regressor.safetensors").is_file()
    finally:
        torch.set_num_threads(threads)

"""Head inference fast paths: the pixel-MLP per-level forward (first layer at native resolution, members
batched, BatchNorm folded) equals the concat-then-MLP forward; bf16 autocast inference stays close to fp32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labelgen.heads import create_head

torch.set_num_threads(1)


def _levels(sizes, channels, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, c, h, w, generator=g) for c, (h, w) in zip(channels, sizes)]


def _randomize_norms(head, seed=1):
    """Trained-looking BatchNorm statistics and affine parameters (defaults would make folding trivial)."""
    g = torch.Generator().manual_seed(seed)
    for module in head.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            width = module.num_features
            module.running_mean.copy_(torch.randn(width, generator=g))
            module.running_var.copy_(torch.rand(width, generator=g) + 0.5)
            module.weight.data.copy_(torch.randn(width, generator=g))
            module.bias.data.copy_(torch.randn(width, generator=g))


def _concat_forward(head, levels):
    """The reference: every level bilinearly upsampled to the output size, concatenated, each member's MLP."""
    height, width = head.output_size
    full = torch.cat([F.interpolate(l, size=(height, width), mode="bilinear", align_corners=False) for l in levels], 1)
    pixels = full.permute(0, 2, 3, 1).reshape(-1, full.shape[1])  # [N*H*W, D]
    return head.forward_pixels(pixels).view(full.shape[0], height, width, head.ensemble, -1).permute(0, 3, 4, 1, 2)


@pytest.mark.parametrize("sizes, output_size", [
    ([(4, 4), (8, 8), (16, 16)], (16, 16)),  # the finest level at the output size (no upsampling)
    ([(2, 3), (5, 7), (9, 13)], (18, 26)),  # odd, non-square, non-integer scale factors
    ([(8, 8)], (32, 32)),  # one level
    ([(4, 4), (4, 4), (16, 8)], (12, 24)),  # a level finer than the output in one axis (downsampling)
])
@pytest.mark.parametrize("max_chunk_floats", [2 ** 25, 300])  # whole images / bands of rows
@pytest.mark.parametrize("member_chunk_floats", [2 ** 21, 1])  # (CPU) all 3 members at once / one at a time
def test_pixel_mlp_per_level_forward_equals_concat_forward(sizes, output_size, max_chunk_floats, member_chunk_floats):
    channels = [5, 3, 2][:len(sizes)]
    head = create_head("pixel-mlp", channels, 4, output_size, ensemble=3, hidden=[16, 8],
                       max_chunk_floats=max_chunk_floats, member_chunk_floats=member_chunk_floats)
    _randomize_norms(head)
    head.eval()
    levels = _levels(sizes, channels)
    with torch.no_grad():
        logits, expected = head(levels), _concat_forward(head, levels)
    assert logits.shape == (2, 3, 4, *output_size) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("member_chunk_floats", [2 ** 21, 1])
def test_pixel_mlp_forward_in_train_mode_uses_batch_statistics(member_chunk_floats):
    head = create_head("pixel-mlp", [5, 3], 4, (8, 8), ensemble=2, hidden=[16, 8],
                       member_chunk_floats=member_chunk_floats).train()
    levels = _levels([(4, 4), (8, 8)], [5, 3])
    with torch.no_grad():
        torch.testing.assert_close(head(levels), _concat_forward(head, levels), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head_type, options", [("pixel-mlp", {"ensemble": 3, "hidden": [16, 8]}),
                                                ("conv", {"hidden": 8})])
def test_bf16_inference_is_close_to_fp32(head_type, options):
    """The CUDA path (autocast bf16: projections, upsampling and sums in bf16), exercised on CPU."""
    head = create_head(head_type, [5, 3, 2], 4, (16, 16), **options)
    if head_type == "pixel-mlp":
        _randomize_norms(head)
    levels = _levels([(4, 4), (8, 8), (16, 16)], [5, 3, 2])
    assert head.inference_bf16 == "auto"
    fp32 = head.predict_proba(levels)  # CPU + auto: fp32
    head.inference_bf16 = True
    bf16 = head.predict_proba(levels)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert not torch.equal(bf16, fp32)  # it really ran in lower precision
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0)
    assert (bf16.argmax(2) == fp32.argmax(2)).float().mean() > 0.95
    assert head.training  # predict_proba restores the mode


def test_head_inference_bench_runs_both_modes_with_equal_logits(capsys):
    """bench/bench_head_inference.py on CCP's level shapes, K = 2, batches of 1 and 2: a row per batch x mode, and
    the grouped forward's logits equal the all-at-once one's (the bench asserts it)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_head_inference.py"
    spec = importlib.util.spec_from_file_location("bench_head_inference", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        rows = bench.main(["--k", "2", "--batch", "1,2", "--repeat", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)  # the bench sets the process's thread count
    assert [(r["batch"], r["k"], r["members"]) for r in rows] == [
        (1, 2, "all"), (1, 2, "groups"), (2, 2, "all"), (2, 2, "groups")]
    assert all(r["median_ms"] > 0 for r in rows)
    assert "| 2 | 2 | groups |" in capsys.readouterr().out

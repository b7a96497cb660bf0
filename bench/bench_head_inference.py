"""Pixel-MLP inference time per image vs ensemble size K and the CPU member grouping.

The feature levels are those of the CCP table's diffusion teacher (`tune-features`' choice t = 25, 50, 100, every
UNet up-block of the 96x64 DDPM: 12 levels, 3 timesteps x 4 sizes, D = 2,112 channels), random values; the
head is a fresh pixel-MLP (D -> 256 -> 128 -> 8) in eval mode. Timing does not depend on the weights.

* ``groups``: the default, ``member_chunk_floats`` = labelgen.heads.pixel_mlp.MEMBER_CHUNK_FLOATS (on the CPU the
  members and images run a few at a time, so their full-resolution first-layer output stays cache-sized);
* ``all``: every member and image of the batch at once (``member_chunk_floats`` unlimited), what CUDA does.

    .venv/bin/python bench/bench_head_inference.py [--k 3,10] [--batch 1,8] [--repeat 7] [--threads 2]

Prints a markdown table (median and fastest of ``--repeat`` forward passes, ms per image); the two modes' logits
are checked to agree.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# (channels, height, width) per level: blocks 0-3 of the 96x64 DDPM at each of 3 timesteps (W/cache/features)
CCP_LEVELS = [(256, 12, 8)] * 3 + [(256, 24, 16)] * 3 + [(128, 48, 32)] * 3 + [(64, 96, 64)] * 3
OUTPUT_SIZE = (96, 64)
NUM_CLASSES = 8  # CCP-8


def time_forward(head, levels, repeat: int):
    """(seconds of ``repeat`` eval forward passes after one warm-up pass, the logits [N, K, C, H, W])."""
    import torch

    with torch.no_grad():
        head(levels)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            logits = head(levels)
            times.append(time.perf_counter() - start)
    assert logits.shape == (levels[0].shape[0], head.ensemble, NUM_CLASSES, *OUTPUT_SIZE), logits.shape
    return times, logits


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="3,10", help="Ensemble sizes.")
    parser.add_argument("--batch", default="1,8", help="Images per forward pass.")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from labelgen.heads import create_head
    from labelgen.heads.pixel_mlp import MEMBER_CHUNK_FLOATS

    torch.set_num_threads(args.threads)
    rows = []
    for batch in (int(x) for x in args.batch.split(",")):
        generator = torch.Generator().manual_seed(0)
        levels = [torch.randn(batch, c, h, w, generator=generator) for c, h, w in CCP_LEVELS]  # [N, C_i, h_i, w_i]
        for k in (int(x) for x in args.k.split(",")):
            reference = None
            for mode, budget in (("all", 2 ** 40), ("groups", MEMBER_CHUNK_FLOATS)):
                torch.manual_seed(0)  # the same weights in both modes
                head = create_head("pixel-mlp", [c for c, _, _ in CCP_LEVELS], NUM_CLASSES, OUTPUT_SIZE,
                                   ensemble=k, member_chunk_floats=budget).eval()
                seconds, logits = time_forward(head, levels, args.repeat)
                if reference is None:
                    reference = logits
                else:  # the grouping changes the order of work, not the result
                    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
                times = [t / batch * 1000 for t in seconds]
                rows.append({"batch": batch, "k": k, "members": mode, "median_ms": statistics.median(times),
                             "min_ms": min(times)})
    print(f"pixel-MLP inference, {len(CCP_LEVELS)} levels -> {OUTPUT_SIZE[0]}x{OUTPUT_SIZE[1]}, {args.threads} threads, "
          f"ms per image (median / fastest of {args.repeat} passes)\n")
    print("| batch | K | members, images at once | median ms | fastest ms |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['k']} | {row['members']} | {row['median_ms']:.0f} | {row['min_ms']:.0f} |")
    return rows


if __name__ == "__main__":
    main()

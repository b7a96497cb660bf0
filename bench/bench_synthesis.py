"""Synthesis throughput vs bare generator sampling (same machine, same batch size).

For each generator: a throw-away workspace with 4 synthetic annotations (masks = brightness
classes), a head trained for 1 epoch (quality is irrelevant here), then
  bare      generator.sample(seeds) in batches (images + features, nothing else)
  synthesis labelgen.synthesis.synthesize: sample -> head -> mask + uncertainty -> PNG -> tar shards
and the ratio synthesis/bare samples per second. PNG encoding in 2 threads vs the main thread is
measured too (``encode`` column).

Synthesis overlaps labelling of batch k with sampling of batch k+1 (SynthesisConfig.overlap, default on).
``--compile`` sets the DDPM rows' generator option compile (auto = on for CUDA only; true on CPU needs a C++
toolchain and compiles for minutes; a failure falls back to eager with one warning line).

    .venv/bin/python bench/bench_synthesis.py [--n 32] [--batch-size 16] [--threads 1] [--skip-ddpm]
        [--compile auto|true|false]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

# a small pixel-space DDPM (random weights: throughput only), 32x32, DDIM sampling
TINY_DDPM_UNET = {"sample_size": [32, 32], "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64],
                  "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
                  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}


def make_workspace(root: Path, backend: str, head: str, checkpoint=None, options=None):
    from labelgen.heads.train import TrainConfig, train_heads
    from labelgen.workspace import create_workspace

    ws = create_workspace(root, backend, ["dark", "mid", "bright"], checkpoint=checkpoint,
                          head={"type": head, "ensemble": 3 if head == "pixel-mlp" else 1}, generator_options=options)
    for annotation_id in ws.sample_annotations(4, seed_start=0):
        grey = ws.read_annotation(annotation_id)[0].mean(axis=2)
        ws.save_mask(annotation_id, np.digitize(grey, [85, 170]).astype(np.uint8))
    folder, head = ws.head_settings()
    train_heads(ws.teacher(head=False), ws, TrainConfig(epochs=1, pixels_per_image=256), folder, head, progress=False,
                store=ws.feature_store)
    return ws


def bare_rate(ws, n: int, batch_size: int) -> float:
    generator = ws.generator()
    generator.sample([0])  # warm-up
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, n, batch_size):
            generator.sample(list(range(10**6 + start, 10**6 + min(n, start + batch_size))))
    return n / (time.perf_counter() - started)


def synthesis_rate(ws, n: int, batch_size: int, encode_workers: int, out: Path) -> tuple[float, float]:
    from labelgen.synthesis import SynthesisConfig, synthesize

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    config = SynthesisConfig(n=n, shard_size=n, batch_size=batch_size, encode_workers=encode_workers)
    summary = synthesize(ws.teacher(), config, out, progress=False)
    return n / (time.perf_counter() - started), summary.bytes / n


def encode_rates(size: int, count: int = 48) -> dict[int, float]:
    """Samples/s of encode_sample (image PNG + mask PNG + JSON) for ``size``^2 samples, by thread count."""
    from concurrent.futures import ThreadPoolExecutor

    from labelgen.data.shards import ShardSample, encode_sample

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    image = np.stack([(xx * 255 // size), (yy * 255 // size), rng.integers(0, 40, (size, size))], -1).astype(np.uint8)
    samples = [ShardSample(f"{k:09d}", image, ((xx // 16 + yy // 16 + k) % 5).astype(np.uint8), {"k": k})
               for k in range(count)]
    rates = {}
    for threads in (1, 2):
        started = time.perf_counter()
        if threads == 1:
            for sample in samples:
                encode_sample(sample)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(encode_sample, samples))
        rates[threads] = count / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--skip-ddpm", action="store_true")
    parser.add_argument("--compile", choices=["auto", "true", "false"], default="auto",
                        help="the DDPM rows' generator option compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    cases = [("dcgan", "pixel-mlp", None, None), ("dcgan", "conv", None, None)]
    if not args.skip_ddpm:
        from labelgen.generators import create_generator

        torch.manual_seed(0)
        create_generator("ddpm", unet_config=TINY_DDPM_UNET, timesteps=[50, 150, 250]).save_pretrained(tmp / "ddpm")
        cases += [("ddpm", "conv", tmp / "ddpm", {"ddim_steps": steps, "compile": args.compile}) for steps in (20, 50)]
    rows = []
    for k, (backend, head, checkpoint, options) in enumerate(cases):
        ws = make_workspace(tmp / f"w{k}", backend, head, checkpoint, options)
        bare = bare_rate(ws, args.n, args.batch_size)
        rate_pool, bytes_per_sample = synthesis_rate(ws, args.n, args.batch_size, 2, tmp / f"out{k}")
        rate_main, _ = synthesis_rate(ws, args.n, args.batch_size, 0, tmp / f"out{k}")
        name = backend + (f" DDIM-{options['ddim_steps']}" if options else "")
        h, w = ws.resolution
        rows.append((name, f"{head} x{3 if head == 'pixel-mlp' else 1}", f"{h}x{w}", bare, rate_pool, rate_main,
                     bytes_per_sample))
        print(rows[-1], file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    encode_rows = [(size, encode_rates(size)) for size in (64, 256, 512)]
    print(f"command: .venv/bin/python bench/bench_synthesis.py --n {args.n} --batch-size {args.batch_size} "
          f"--threads {args.threads}{' --skip-ddpm' if args.skip_ddpm else f' --compile {args.compile}'}\n")
    print("| generator | head | resolution | bare sampling (samples/s) | synthesis, 2 encode threads (samples/s) | "
          "ratio | synthesis, encode in main thread (samples/s) | bytes/sample |")
    print("|---|---|---|---|---|---|---|---|")
    for name, head, res, bare, pool, main_thread, size in rows:
        print(f"| {name} | {head} | {res} | {bare:.1f} | {pool:.1f} | {pool / bare:.2f} | {main_thread:.1f} | {size:.0f} |")
    print("\n| PNG encoding (image + mask + json) | 1 thread (samples/s) | 2 threads (samples/s) | speed-up |")
    print("|---|---|---|---|")
    for size, rates in encode_rows:
        print(f"| {size}x{size} | {rates[1]:.0f} | {rates[2]:.0f} | {rates[2] / rates[1]:.2f} |")


if __name__ == "__main__":
    main()


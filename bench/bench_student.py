"""Student training throughput on this machine: images/s of full training steps (label-distill on a
synthetic shard set with soft labels: decode + augment + forward + backward + AdamW) and, beside it,
the data loader alone (decode + augment + collate), at each image size.

    .venv/bin/python bench/bench_student.py [--sizes 128,256] [--arch unet --encoder resnet34]
        [--steps 6] [--batch-size 8] [--threads 1] [--workers 0] [--append docs/benchmarks.md]

The first ``--warmup`` steps (allocator, first-call overheads) are left out of the training rate.
Prints a markdown table; ``--append`` adds it as a section to a markdown file.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import labelgen  # noqa: F401  (torchvision shim first)
import torch
from torch.utils.data import DataLoader

from labelgen.student.data import ResumableSampler, StudentDataset, open_source
from labelgen.student.models import IMAGENET_MEAN, IMAGENET_STD
from labelgen.student.testing import CLASSES, make_shards
from labelgen.student.train import TrainOptions, train


def loader_rate(shards: Path, size: int, batch: int, workers: int, batches: int) -> float:
    """Images/s of the training DataLoader alone (label-distill items: image, mask, soft labels)."""
    dataset = StudentDataset(open_source(shards), len(CLASSES), (size, size), IMAGENET_MEAN, IMAGENET_STD,
                             want_soft=True)
    sampler = ResumableSampler(len(dataset), batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True)
    seen, t0, epoch = 0, time.perf_counter(), 0
    while seen < batches * batch:
        sampler.set_epoch(epoch)
        for b in loader:
            seen += b["image"].shape[0]
            if seen >= batches * batch:
                break
        epoch += 1
    return seen / (time.perf_counter() - t0)


def train_rate(shards: Path, out: Path, size: int, args) -> tuple[float, float]:
    """(images/s over the steps after warm-up, final loss)."""
    options = TrainOptions(mode="label-distill", data=str(shards), out=str(out), arch=args.arch,
                           encoder=args.encoder, image_size=(size, size), batch_size=args.batch_size,
                           max_steps=args.warmup + args.steps, workers=args.workers, progress=False,
                           resume=False, save_every=10 ** 9)
    result = train(options, log=lambda *a, **k: None)
    times = result.extra["step_times"][args.warmup:]
    return result.extra["images_per_step"] * len(times) / sum(times), result.losses[-1]


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--samples", type=int, default=32, help="shard-set size per image size")
    p.add_argument("--append", type=Path, default=None, help="markdown file to append the section to")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            shards = make_shards(Path(tmp) / f"shards{size}", args.samples, (size, size), per_shard=16)
            data = loader_rate(shards, size, args.batch_size, args.workers, batches=args.steps)
            rate, loss = train_rate(shards, Path(tmp) / f"run{size}", size, args)
            rows.append(f"| {size}x{size} | {args.arch}-{args.encoder} | {args.batch_size} | {rate:.1f} | {data:.0f} | "
                        f"{1000 * args.batch_size / rate:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    cmd = "python bench/bench_student.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join([
        "| size | model | batch | train images/s | data-loader-only images/s | ms / step |",
        "|---|---|---|---|---|---|", *rows])
    section = (f"## Student training throughput (CPU)\n\n`{cmd.strip()}` — torch {torch.__version__}, "
               f"{args.threads} intra-op thread(s), {args.workers} loader workers, {platform.processor() or platform.machine()}, "
               f"label-distill on soft-label shards (decode + augment + fwd + bwd + AdamW), {args.steps} timed steps "
               f"after {args.warmup} warm-up.\n\n{table}\n")
    print(section)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + section)
    return section


if __name__ == "__main__":
    main()

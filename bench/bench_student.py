"""Student training throughput on this machine: images/s of full training steps (label-distill on a
synthetic shard set with soft labels: decode + augment + forward + backward + AdamW) and, beside it,
the data loader alone (the same DataLoader as ``student train``: decode + augment + collate in its worker
processes, iterated without the model), at each image size.

    .venv/bin/python bench/bench_student.py [--sizes 128,256] [--arch unet --encoder resnet34]
        [--steps 6] [--batch-size 8] [--threads 1] [--workers N] [--loader-only] [--append docs/benchmarks.md]

``--workers`` defaults to ``student train``'s (sized from the machine). ``--loader-only``: the loader rate
alone (no model). The first ``--warmup`` steps (allocator, first-call overheads) are left out of the
training rate, the first batch (worker start-up) out of the loader rate.
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

from labelgen.student.data import (ResumableSampler, StudentDataset, classes_of, default_loader_workers, make_loader,
                                   open_sources)
from labelgen.student.models import IMAGENET_MEAN, IMAGENET_STD
from labelgen.student.testing import make_shards
from labelgen.student.train import TrainOptions, train


def loader_rate(data: str | Path | list, image_size: tuple[int, int], batch: int, workers: int, batches: int,
                augment: bool = True) -> float:
    """Images/s of ``student train``'s DataLoader alone (label-distill items: image, mask, soft labels) over
    ``batches`` batches after the first; ``data``: one source or a list (as ``--data``)."""
    source = open_sources([str(d) for d in data] if isinstance(data, list) else str(data))
    dataset = StudentDataset(source, len(classes_of(source)), image_size, IMAGENET_MEAN, IMAGENET_STD,
                             augment=augment, want_soft=True, warn=False)
    sampler = ResumableSampler(len(dataset), batch)
    loader = make_loader(dataset, sampler, batch, workers, pin_memory=torch.cuda.is_available())
    seen, t0, epoch, first = 0, None, 0, True
    while seen < batches * batch:
        sampler.set_epoch(epoch)
        for b in loader:
            if first:  # worker start-up: not part of the rate
                first, t0 = False, time.perf_counter()
                continue
            seen += b["image"].shape[0]
            if seen >= batches * batch:
                break
        epoch += 1
    return seen / (time.perf_counter() - t0)


def train_rate(shards: Path, out: Path, size_hw: tuple[int, int], args) -> tuple[float, float]:
    """(images/s over the steps after warm-up, final loss)."""
    options = TrainOptions(mode="label-distill", data=str(shards), out=str(out), arch=args.arch,
                           encoder=args.encoder, image_size=size_hw, batch_size=args.batch_size,
                           max_steps=args.warmup + args.steps, workers=args.workers, progress=False,
                           resume=False, save_every=10 ** 9)
    result = train(options, log=lambda *a, **k: None)
    times = result.extra["step_times"][args.warmup:]
    return result.extra["images_per_step"] * len(times) / sum(times), result.losses[-1]


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="128,256", help="comma-separated N (NxN) or HxW")
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=default_loader_workers(),
                   help="DataLoader workers [default: student train's, from this machine]")
    p.add_argument("--loader-only", action="store_true", help="only the data loader's rate (no model)")
    p.add_argument("--samples", type=int, default=32, help="shard-set size per image size")
    p.add_argument("--append", type=Path, default=None, help="markdown file to append the section to")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in args.sizes.split(","):
            hw = tuple(int(v) for v in text.split("x")) if "x" in text else (int(text), int(text))  # HxW or N
            size = f"{hw[0]}x{hw[1]}"
            shards = make_shards(Path(tmp) / f"shards{size}", args.samples, hw, per_shard=16)
            data = loader_rate(shards, hw, args.batch_size, args.workers, batches=max(args.steps, 4))
            if args.loader_only:
                rows.append(f"| {size} | {args.batch_size} | {args.workers} | {data:.0f} |")
            else:
                rate, _ = train_rate(shards, Path(tmp) / f"run{size}", hw, args)
                rows.append(f"| {size} | {args.arch}-{args.encoder} | {args.batch_size} | {args.workers} | "
                            f"{rate:.1f} | {data:.0f} | {data / rate:.0f}x | {1000 * args.batch_size / rate:.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    cmd = "python bench/bench_student.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.loader_only:
        header = ["| size | batch | loader workers | data-loader-only images/s |", "|---|---|---|---|"]
    else:
        header = ["| size | model | batch | loader workers | train images/s | data-loader-only images/s | "
                  "loader / train | ms / step |", "|---|---|---|---|---|---|---|---|"]
    table = "\n".join([*header, *rows])
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

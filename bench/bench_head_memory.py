"""Peak memory of task-head training vs the number of annotated images (target: flat).

Each configuration runs in a fresh subprocess (peak RSS = ru_maxrss of that process), on the dcgan
generator (installed gan-face-generate weights, 64x64, 4 feature levels, D = 960 channels) with
synthetic annotations (masks = brightness classes of the generated image):

* ``labelgen`` pixel-MLP (K=3): disk-cached native features, random pixels per step (heads/train.py)
* ``labelgen`` conv interpreter
* ``naive`` DatasetGAN-style: every annotated image's features upsampled to 64x64 and kept in memory
  (what labelgen avoids; grows with the image count)

    .venv/bin/python bench/bench_head_memory.py [--counts 5,20,50] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _annotate(root: Path, count: int, head: str):
    import numpy as np

    from labelgen.workspace import create_workspace

    ws = create_workspace(root, "dcgan", ["dark", "mid", "bright"], head={"type": head, "ensemble": 3 if head == "pixel-mlp" else 1})
    for annotation_id in ws.sample_annotations(count, seed_start=0, batch_size=10):
        grey = ws.read_annotation(annotation_id)[0].mean(axis=2)
        ws.save_mask(annotation_id, np.digitize(grey, [85, 170]).astype(np.uint8))
    return ws


def worker(mode: str, count: int, epochs: int) -> dict:
    import torch
    import torch.nn.functional as F

    from labelgen.heads.train import TrainConfig, train_heads
    from labelgen.workspace import Workspace

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="headmem-")) / "w"
    # workspace + feature cache in a helper process, so this process's peak RSS is training only
    subprocess.run([sys.executable, __file__, "--prepare", str(root), str(count), "conv" if mode == "conv" else "pixel-mlp"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ws = Workspace(root)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if mode == "naive":
        levels_per_image = [ws.annotation_features(i) for i in ws.annotated_ids()]
        full = torch.cat([torch.cat([F.interpolate(l, size=ws.resolution, mode="bilinear", align_corners=False)
                                     for l in levels], 1) for levels in levels_per_image])  # [N, D, H, W]
        peak_step = full.numel() * 4
    else:
        folder, head = ws.head_settings()
        result = train_heads(ws.teacher(head=False), ws, TrainConfig(epochs=epochs), folder, head, progress=False,
                             store=ws.feature_store)
        peak_step = result.peak_step_bytes
    return {"mode": mode, "count": count, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mib": rss_before / 1024, "peak_step_mib": peak_step / 2**20,
            "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="5,20,50")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--modes", default="pixel-mlp,conv,naive")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "COUNT"))
    parser.add_argument("--prepare", nargs=3, metavar=("ROOT", "COUNT", "HEAD"))
    args = parser.parse_args()
    if args.prepare:
        ws = _annotate(Path(args.prepare[0]), int(args.prepare[1]), args.prepare[2])
        for annotation_id in ws.annotated_ids():
            ws.annotation_features(annotation_id)
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.epochs)))
        return
    rows = []
    for mode in args.modes.split(","):
        for count in (int(c) for c in args.counts.split(",")):
            proc = subprocess.run([sys.executable, __file__, "--worker", mode, str(count), "--epochs", str(args.epochs)],
                                  capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
            if proc.returncode:
                sys.exit(proc.stderr)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    print(f"command: .venv/bin/python bench/bench_head_memory.py --counts {args.counts} --epochs {args.epochs}\n")
    print("| head training | annotated images | peak RSS (MiB) | RSS before training (MiB) | per-step feature working set (MiB) | time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['count']} | {r['peak_rss_mib']:.0f} | {r['rss_before_mib']:.0f} | "
              f"{r['peak_step_mib']:.1f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()

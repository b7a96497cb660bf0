"""Peak RAM of ``labelgen features`` as the number of images grows (it should stay flat: the shard being written is
streamed image by image), and the rate at which ``student train --features`` reads what it stored.

    .venv/bin/python bench/bench_features.py [--counts 500,1500] [--size 32x32] [--shard-size 256]

For each count N: N seeded scenes in a shard set (labelgen.student.testing), the features of each by a small
fake generator workspace (labelgen.student.testing:FakeGenerator, its three levels), written by ``labelgen features``
in a child process of its own whose peak resident set (``ru_maxrss``) is reported; then the stored features of
every image are read back through ``student train``'s dataset (images/s). Tiny data on purpose: what is measured
is whether memory grows with N, not the teacher's speed. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLUGIN = "labelgen.student.testing"


def child(argv: list[str]) -> None:
    """Run ``labelgen features`` in this process and print its peak RSS (KiB) last."""
    from labelgen.cli import main

    try:
        main(argv)
    except SystemExit as e:
        if e.code:
            raise
    print(f"maxrss_kib {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")


def measure(root: Path, count: int, size: tuple[int, int], shard_size: int) -> dict:
    import labelgen  # noqa: F401
    import torch

    from labelgen.student.data import StudentDataset, classes_of, open_sources
    from labelgen.student.features import StoredFeatures
    from labelgen.student.models import IMAGENET_MEAN, IMAGENET_STD
    from labelgen.student.testing import make_shards

    shards = make_shards(root / f"shards{count}", count, size, per_shard=500)
    out = root / f"feats{count}"
    env = {**os.environ, "LABELGEN_PLUGINS": PLUGIN, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", "features", "-w", str(root / "ws"), "--data",
                           str(shards), "--out", str(out), "--shard-size", str(shard_size), "--device", "cpu"],
                          env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    maxrss = int(proc.stdout.strip().splitlines()[-1].split()[1])
    source = open_sources(str(shards))
    torch.set_num_threads(1)
    dataset = StudentDataset(source, len(classes_of(source)), size, IMAGENET_MEAN, IMAGENET_STD, augment=False,
                             geometric=False, warn=False, features=StoredFeatures(out, source))
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]["features"]
    rate = len(dataset) / (time.perf_counter() - t0)
    disk = sum(p.stat().st_size for p in out.glob("*.tar"))
    return {"count": count, "maxrss_mib": maxrss / 1024, "seconds": seconds, "disk_mib": disk / 2**20,
            "read_per_s": rate}


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return ""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="500,1500", help="comma-separated image counts")
    p.add_argument("--size", default="32x32", help="HxW of the images and of the fake generator (square)")
    p.add_argument("--shard-size", type=int, default=256)
    args = p.parse_args(argv)
    os.environ["LABELGEN_PLUGINS"] = PLUGIN
    from labelgen.cli import parse_size
    from labelgen.workspace import create_workspace

    size = parse_size(args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["LABELGEN_CACHE"] = str(root / "cache")
        create_workspace(root / "ws", f"{PLUGIN}:FakeGenerator", ["background", "square", "disc"],
                         generator_options={"size": size[0]})
        for count in (int(c) for c in args.counts.split(",")):
            rows.append(measure(root, count, size, args.shard_size))
    table = ["| images | peak RSS of `labelgen features` (MiB) | its wall time (s) | on disk (MiB) | read back (images/s) |",
             "|---|---|---|---|---|"]
    table += [f"| {r['count']} | {r['maxrss_mib']:.0f} | {r['seconds']:.1f} | {r['disk_mib']:.1f} | {r['read_per_s']:.0f} |"
              for r in rows]
    text = "\n".join(table)
    print(text)
    return text


if __name__ == "__main__":
    main()

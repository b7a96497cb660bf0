"""Shared helpers for DS/prepare_*.py: read image/mask pairs straight out of a fetched (bare) git
mirror at a pinned commit, resize them, split them with a fixed seed and write the project layout

    OUT/classes.json
    OUT/<split>/images/NNNN.png   RGB
    OUT/<split>/masks/NNNN.png    single-channel uint8 class index (palette PNG), 255 = ignore

Ids are global: train-full gets 0001..N, then val, then test (as labelgen data import-ccp). `annotated-20` is the first
20 of train-full, `unlabeled` holds the train-full images only (never val/test).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import random
import shutil
import subprocess
import sys
from string import Template
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SHORT_SIDE = 96

# DATACARD parts that main_for fills in for every dataset ($-fields: split counts, filled by write_dataset)
CARD_SPLITS_TABLE = """## Splits (ids are global, as labelgen data import-ccp: train-full 0001.., then val, then test)
| split | images | masks |
|---|---|---|
| annotated-20 | $annotated_20 | yes (the first 20 of train-full) |
| unlabeled | $unlabeled | no (= the train-full images; disjoint from val and test) |
| train-full | $train_full | yes (all labelled training photos, for upper-bound runs) |
| val | $val | yes |
| test | $test | yes |
"""
CARD_TAIL = """
## Built with
```
{command}
```

## Summary (from the written files)
```
{summary}
```
"""


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


class GitBlobs:
    """Read files of one commit of a bare git directory (no work tree needed)."""

    def __init__(self, git_dir: Path, commit: str):
        if not Path(git_dir).is_dir():
            die(f"{git_dir}: git directory not found (fetch the repository first)")
        self.git_dir = str(git_dir)
        res = self._git("rev-parse", "--verify", f"{commit}^{{commit}}", check=False)
        if res.returncode != 0:
            die(f"{git_dir}: commit {commit} not found")
        self.commit = res.stdout.decode().strip()

    def _git(self, *args: str, check: bool = True, data: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["git", f"--git-dir={self.git_dir}", *args], input=data, capture_output=True,
                              check=check)

    def list(self, folder: str) -> list[str]:
        out = self._git("ls-tree", "-r", "--name-only", self.commit, "--", folder.rstrip("/") + "/").stdout
        return sorted(p for p in out.decode().splitlines() if p)

    def read(self, path: str) -> bytes:
        res = self._git("cat-file", "blob", f"{self.commit}:{path}", check=False)
        if res.returncode != 0:
            die(f"{path}: not readable at {self.commit} ({res.stderr.decode().strip()})")
        if res.stdout.startswith(b"version https://git-lfs"):
            die(f"{path}: is a Git LFS pointer, not the file")
        return res.stdout


def open_image(data: bytes, name: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # noqa: BLE001 - any decoder error is a bad input file
        die(f"{name}: not a readable image ({e})")
    return im


def target_size(w: int, h: int, max_short: int = MAX_SHORT_SIDE) -> tuple[int, int]:
    """Size with the short side at most max_short, aspect ratio kept (never upscales)."""
    short = min(w, h)
    if short <= max_short:
        return w, h
    s = max_short / short
    return max(1, round(w * s)), max(1, round(h * s))


def binarise(mask: Image.Image, threshold: int = 128) -> np.ndarray:
    """0/255-style (possibly JPEG-compressed) foreground mask -> uint8 {0, 1}."""
    return (np.asarray(mask.convert("L")) >= threshold).astype(np.uint8)


def palette_png(index: np.ndarray, colours: list[tuple[int, int, int]]) -> Image.Image:
    im = Image.fromarray(index.astype(np.uint8), mode="P")
    pal = [0] * 768
    for i, c in enumerate(colours):
        pal[3 * i:3 * i + 3] = list(c)
    pal[3 * 255:3 * 256] = [255, 255, 255]  # ignore
    im.putpalette(pal)
    return im


@dataclass
class Sample:
    source: str  # original file name (image)
    image: Image.Image  # RGB, already resized
    mask: np.ndarray  # uint8 class ids, same H, W as image


def _thumb(img: Image.Image) -> np.ndarray:
    """Zero-mean unit-norm 32x32 gray thumbnail of the central 70 % (ignores borders such as endoscope masks)."""
    w, h = img.size
    g = img.convert("L").crop((int(w * .15), int(h * .15), int(w * .85), int(h * .85))).resize((32, 32), Image.BOX)
    x = np.asarray(g, dtype=np.float64).ravel()
    x -= x.mean()
    return x / (np.linalg.norm(x) + 1e-9)


def drop_duplicates(samples: list["Sample"], threshold: float = 0.95) -> tuple[list["Sample"], list[str]]:
    """Drop (near-)duplicate photos: correlation of central thumbnails >= threshold. The first in the given
    order is kept. Returns the kept samples and 'dropped (duplicate of kept)' notes."""
    x = np.stack([_thumb(s.image) for s in samples])
    corr = x @ x.T
    kept, notes = [], []
    for i, s in enumerate(samples):
        dup = next((j for j in kept if corr[i, j] >= threshold), None)
        if dup is None:
            kept.append(i)
        else:
            notes.append(f"{s.source} (duplicate of {samples[dup].source}, r={corr[i, dup]:.3f})")
    return [samples[i] for i in kept], notes


@dataclass
class SplitSpec:
    n_val: int
    n_test: int
    n_annotated: int = 20
    seed: int = 0


def write_dataset(out: Path, samples: list[Sample], classes: list[dict], spec: SplitSpec,
                  datacard: str) -> dict[str, int]:
    n = len(samples)
    n_train = n - spec.n_val - spec.n_test
    if n_train < max(spec.n_annotated, 1):
        die(f"{n} samples: too few for val={spec.n_val}, test={spec.n_test}, annotated={spec.n_annotated}")
    order = list(range(n))
    random.Random(spec.seed).shuffle(order)
    train, val, test = order[:n_train], order[n_train:n_train + spec.n_val], order[n_train + spec.n_val:]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    colours = [tuple(c["color"]) for c in classes]
    (out / "classes.json").write_text(json.dumps({"classes": classes}, indent=2) + "\n")

    rows = []
    ids = {}
    next_id = 1
    for split, idx in (("train-full", train), ("val", val), ("test", test)):
        for i in idx:
            ids[i] = next_id
            rows.append((f"{next_id:04d}", split, samples[i].source))
            next_id += 1

    def put(split: str, idx: list[int], with_masks: bool) -> None:
        (out / split / "images").mkdir(parents=True)
        if with_masks:
            (out / split / "masks").mkdir(parents=True)
        for i in idx:
            name = f"{ids[i]:04d}.png"
            s = samples[i]
            s.image.save(out / split / "images" / name)
            if with_masks:
                palette_png(s.mask, colours).save(out / split / "masks" / name)

    put("annotated-20", train[:spec.n_annotated], True)
    put("train-full", train, True)
    put("unlabeled", train, False)
    put("val", val, True)
    put("test", test, True)
    with open(out / "sources.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "split", "source_file"])
        w.writerows(sorted(rows))
    counts = {"annotated-20": spec.n_annotated, "unlabeled": len(train), "train-full": len(train),
              "val": len(val), "test": len(test)}
    card = Template(datacard).safe_substitute({k.replace("-", "_"): v for k, v in counts.items()})
    (out / "DATACARD.md").write_text(card)
    return counts


def summary(out: Path) -> str:
    lines = []
    for split in ("annotated-20", "unlabeled", "train-full", "val", "test"):
        imgs = sorted((out / split / "images").glob("*.png"))
        sizes = [Image.open(p).size for p in imgs]
        fg = []
        for p in imgs:
            m = out / split / "masks" / p.name
            if m.exists():
                fg.append(float((np.asarray(Image.open(m)) == 1).mean()))
        ws, hs = [s[0] for s in sizes], [s[1] for s in sizes]
        line = (f"{split}: {len(imgs)} images, W {min(ws)}-{max(ws)}, H {min(hs)}-{max(hs)}")
        if fg:
            line += f", foreground fraction mean {np.mean(fg):.3f} (min {min(fg):.3f}, max {max(fg):.3f})"
        lines.append(line)
    return "\n".join(lines)


def main_for(doc: str, script: str, repo: str, commit: str,
             read_samples: Callable[[GitBlobs], tuple[list[Sample], list[str]]],
             classes: list[dict], spec: SplitSpec, card: str, **card_fields: str) -> None:
    """The command line of a DS/prepare_*.py script: parse --git-dir/--commit/--out, read the samples with
    read_samples(git) -> (samples, dropped notes), drop near-duplicates, write the dataset and its DATACARD.

    card is the DATACARD up to its caveats: a str.format template with {repo} {commit} {seed} {n_val} {n_test}
    {dropped} {splits_table} plus the script's own card_fields; CARD_TAIL (command, summary) is appended.
    $-placeholders are filled by write_dataset with the split counts."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--git-dir", type=Path, required=True, help="bare git dir of the fetched mirror")
    ap.add_argument("--commit", default=commit)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    git = GitBlobs(args.git_dir, args.commit)
    samples, dropped = read_samples(git)
    samples, dups = drop_duplicates(samples)
    dropped += dups
    command = " ".join([".venv/bin/python", f"bench/datasets/{Path(script).name}", "--git-dir", str(args.git_dir),
                        "--commit", git.commit, "--out", str(args.out)])
    text_card = (card + CARD_TAIL).format(
        repo=repo, commit=git.commit, seed=spec.seed, n_val=spec.n_val, n_test=spec.n_test,
        dropped="".join(f"\n  - {d}" for d in dropped) or " none", splits_table=CARD_SPLITS_TABLE,
        command=command, summary="{summary}", **card_fields)
    counts = write_dataset(args.out, samples, classes, spec, text_card)
    text = summary(args.out)
    card_path = args.out / "DATACARD.md"
    card_path.write_text(card_path.read_text().replace("{summary}", text))
    print(f"wrote {args.out}: {counts}; dropped: {dropped or 'none'}")
    print(text)

"""Synthetic datasets as WebDataset tar shards: writer, reader, resume.

Layout of a shard set (readable by ``webdataset.WebDataset(sorted(glob("DIR/*.tar")))``)::

    DIR/000000.tar             samples in key order; each sample is a group of tar members
        <key>.png              RGB image
        <key>.mask.png         index mask (0..C-1, 255 = ignore), 8-bit grayscale PNG, so any decoder
                               (webdataset "l8"/"rgb8", PIL, OpenCV) yields the class ids
        <key>.json             metadata: seed/latent id, generator and head ids, uncertainty, ...
        <key>.<ext>            optional extras (e.g. soft labels), raw bytes
    DIR/000000.json            the shard's index: keys, sample count, bytes (written after the tar)
    DIR/manifest.json          the whole set: shard list, sample count, classes, producer config

Crash safety and resume: a shard is written to ``NNNNNN.tar.<pid>.tmp`` and renamed when complete,
then its index file is written atomically. A shard counts as done only when both exist, so after a
kill at any moment a re-run sees exactly the finished shards (no duplicate, no missing, no corrupt
shard) and redoes the rest. Shard ``i`` always holds the same work items, so shards are independent
units that several workers can write in parallel (disjoint shard ids).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelgen.data.classes import ClassList
from labelgen.data.io import atomic_write_json, decode_png, png_bytes, read_json
from labelgen.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "labelgen-shards/1"


def shard_name(shard_id: int) -> str:
    return f"{shard_id:06d}.tar"


@dataclass
class ShardSample:
    key: str
    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] uint8
    meta: dict[str, Any]
    extras: dict[str, bytes] = field(default_factory=dict)  # extension (e.g. "soft.npz") -> raw bytes


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def encode_sample(sample: ShardSample) -> list[tuple[str, bytes]]:
    """Tar members of one sample (PNG encoding is the costly part: callers may do it in workers)."""
    assert "." not in sample.key, f"sample keys must not contain '.': {sample.key!r}"
    members = [
        (f"{sample.key}.png", png_bytes(sample.image)),
        (f"{sample.key}.mask.png", png_bytes(sample.mask)),
        (f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode()),
    ]
    members += [(f"{sample.key}.{ext}", payload) for ext, payload in sorted(sample.extras.items())]
    return members


class ShardWriter:
    """Writes shards of a set; ``done_shards()`` tells a resumed run what is already finished."""

    def __init__(self, out_dir: Path | str, classes: ClassList | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.classes = classes

    def done_shards(self) -> set[int]:
        done = set()
        for index in self.out_dir.glob("[0-9]" * 6 + ".json"):
            if (self.out_dir / (index.stem + ".tar")).is_file():
                done.add(int(index.stem))
        return done

    def clean_partial(self) -> int:
        """Remove temp files and tars without an index (left by a kill). Returns how many."""
        removed = 0
        for tmp in self.out_dir.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        for tar in self.out_dir.glob("[0-9]" * 6 + ".tar"):
            if not tar.with_suffix(".json").is_file():
                tar.unlink(missing_ok=True)
                removed += 1
        return removed

    def write_shard(self, shard_id: int, samples: Iterable[ShardSample] | None = None,
                    encoded: Iterable[list[tuple[str, bytes]]] | None = None, info: dict | None = None) -> dict:
        """Write shard ``shard_id`` from samples (or pre-encoded members); atomic. Returns its index."""
        if encoded is None:
            encoded = (encode_sample(s) for s in (samples or ()))
        final = self.out_dir / shard_name(shard_id)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
        keys: list[str] = []
        now = time.time()
        try:
            with open(tmp, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                    for members in encoded:
                        for name, payload in members:
                            _add_member(tar, name, payload, now)
                        keys.append(members[0][0].split(".", 1)[0])
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        index = {"shard": final.name, "count": len(keys), "keys": keys, "bytes": final.stat().st_size, **(info or {})}
        atomic_write_json(final.with_suffix(".json"), index)
        return index

    def write_manifest(self, config: dict | None = None) -> dict:
        """Summarise all finished shards into manifest.json (call once, after all workers are done)."""
        shards = [read_json(self.out_dir / f"{i:06d}.json") for i in sorted(self.done_shards())]
        manifest = {
            "format": FORMAT,
            "shards": [{k: s[k] for k in ("shard", "count", "bytes")} for s in shards],
            "num_samples": sum(s["count"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "classes": self.classes.to_json()["classes"] if self.classes else None,
            "config": config or {},
        }
        atomic_write_json(self.out_dir / MANIFEST, manifest)
        return manifest


def read_manifest(path: Path | str) -> dict:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise DataError(f"{path}: not a finished shard set (no {MANIFEST}; is synthesis still running?)")
    manifest = read_json(path / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path / MANIFEST}: unknown format {manifest.get('format')!r}")
    return manifest


class ShardReader:
    """Yields the samples of a shard set in order; ``start`` skips that many (resume a consumer).

    Uses manifest.json when present, else every finished shard (tar + index) found in the folder."""

    def __init__(self, path: Path | str, start: int = 0, decode: bool = True):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: shard folder not found")
        if (self.path / MANIFEST).is_file():
            manifest = read_manifest(self.path)
            self.shards = [(self.path / s["shard"], s["count"]) for s in manifest["shards"]]
            self.classes = ClassList.from_json({"classes": manifest["classes"]}) if manifest.get("classes") else None
        else:
            writer = ShardWriter(self.path)
            self.shards = [(self.path / shard_name(i), read_json(self.path / f"{i:06d}.json")["count"])
                           for i in sorted(writer.done_shards())]
            self.classes = None
        if not self.shards:
            raise DataError(f"{self.path}: no finished shards")
        self.start = start
        self.decode = decode

    def __len__(self) -> int:
        return max(0, sum(n for _, n in self.shards) - self.start)

    def __iter__(self) -> Iterator[ShardSample]:
        skip = self.start
        for path, count in self.shards:
            if skip >= count:
                skip -= count
                continue
            for i, sample in enumerate(iter_shard(path, self.decode)):
                if i >= skip:
                    yield sample
            skip = 0


def iter_shard(path: Path, decode: bool = True) -> Iterator[ShardSample]:
    """Samples of one tar shard, in order."""
    try:
        tar = tarfile.open(path, mode="r")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: unreadable shard ({e})") from None
    with tar:
        current: str | None = None
        group: dict[str, bytes] = {}
        for member in tar:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            if current is not None and key != current:
                yield _sample(current, group, decode, path)
                group = {}
            current = key
            group[ext] = tar.extractfile(member).read()
        if current is not None:
            yield _sample(current, group, decode, path)


def _sample(key: str, group: dict[str, bytes], decode: bool, path: Path) -> ShardSample:
    for ext in ("png", "mask.png", "json"):
        if ext not in group:
            raise DataError(f"{path}: sample {key} has no .{ext}")
    extras = {k: v for k, v in group.items() if k not in ("png", "mask.png", "json")}
    if not decode:
        return ShardSample(key, np.empty((0, 0, 3), np.uint8), np.empty((0, 0), np.uint8), json.loads(group["json"]),
                           {"png": group["png"], "mask.png": group["mask.png"], **extras})
    return ShardSample(key, decode_png(group["png"]), decode_png(group["mask.png"], mask=True),
                       json.loads(group["json"]), extras)

"""Teacher features stored once, read many times: ``labelgen features`` writes them, ``student train --features``
reads them at loader speed instead of running the generator for every batch.

A features set FEATS has the shard codec's layout (labelgen.data.shards; manifest format ``labelgen-features/1``)::

    FEATS/000000.tar        per image one member <sha256 of its pixels>.features.f16: the teacher's selected
                            levels [C_i, h_i, w_i], float16, back to back
    FEATS/000000.json       the shard's index (keys, count, bytes), written after the tar
    FEATS/features.json     the plan (data, teacher, levels, shard size): resuming under another plan is refused
    FEATS/manifest.json     written last: shards, teacher {generator, levels}, levels [{name, index, channels,
                            size [h, w], stride}] (the same shapes for every image), data

What is stored is ``Teacher.features`` of each item (the one way from an item to features): an image-encoding
teacher (diffusion) sees the stored image resized to the generator resolution by the one resize rule, a GAN
teacher recomputes the sample from its recipe. The items are those ``student train --data`` reads (shard sets,
labelled folders), in that order; shard i holds items i*S .. (i+1)*S - 1, written to a temp file and renamed,
so a killed run resumes where it stopped (finished shards kept) and ends with the same features. The shard being
written is streamed member by member: RAM holds one batch of features, whatever the number of images.

The student matches its training images to the set by the sha256 of their pixels (labelgen.data.io.pixels_sha256),
so one set serves any selection of the images it covers; an image without features, or a set made by another
teacher (generator identity or levels) than ``--teacher``, is refused in one line. Only colour augmentation applies
to the student's input: the targets are the features of the image as stored.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from labelgen.data.io import atomic_write_json, pixels_sha256, read_json
from labelgen.data.shards import FEATURES_FORMAT, FeatureSet, ShardWriter, encode_features
from labelgen.errors import LabelgenError
from labelgen.run import RunLock, progress as progress_bar

PLAN_NAME = "features.json"  # the plan a features set was started with (a resume must match it)


@dataclass
class FeaturesConfig:
    """``labelgen features``' options (their defaults are stated here once)."""

    data: list[str]  # what `student train --data` reads: shard sets and labelled folders, in order
    shard_size: int = 256  # images per shard
    batch_size: int = 8  # images per teacher forward


@dataclass
class FeaturesSummary:
    images: int
    shards: int
    shards_written: int
    seconds: float
    bytes: int
    manifest: dict[str, Any]


def image_digests(source) -> list[str]:
    """The sha256 of every item's pixels, in order (how stored features are matched to images)."""
    return [pixels_sha256(source.image(i)) for i in range(len(source))]


def describe_levels(teacher) -> list[dict[str, Any]]:
    """What the manifest says of each stored level: generator level index and name, channels, size, stride
    (``Teacher.feature_info``: from the generator's architecture, the teacher is not run for it)."""
    return [{"name": level.module, "index": level.index, "channels": level.num_chs, "size": list(level.size),
             "stride": level.reduction} for level in teacher.feature_info]


def write_features(teacher, config: FeaturesConfig, out_dir: Path | str, progress: bool = True,
                   log=print) -> FeaturesSummary:
    """``labelgen features``: the teacher's features of every item of ``config.data`` into ``out_dir`` (see the
    module docstring); the folder is locked for the run."""
    from labelgen.student.data import open_sources

    out_dir = Path(out_dir)
    if config.shard_size < 1 or config.batch_size < 1:
        raise LabelgenError("--shard-size and --batch-size must be at least 1")
    source = open_sources(config.data, require_masks=False)
    n = len(source)
    if n == 0:
        raise LabelgenError(f"{', '.join(config.data)}: no images")
    parts = getattr(source, "parts", [source])
    teacher.require_recipes(source.metas, "stored features of images without a generator recipe")  # before writing
    levels = describe_levels(teacher)
    plan = {"format": FEATURES_FORMAT, "data": [{"path": str(Path(p.path).resolve()), "count": len(p)} for p in parts],
            "teacher": {"generator": teacher.generator_id, "levels": list(teacher.levels),
                        "backend": teacher.generator.backend, "resolution": list(teacher.resolution)},
            "levels": levels, "shard_size": config.shard_size, "dtype": "float16"}
    shards = math.ceil(n / config.shard_size)
    with RunLock(out_dir, "labelgen features"):
        plan_path = out_dir / PLAN_NAME
        if plan_path.is_file():
            previous = read_json(plan_path)
            if previous != plan:
                changed = sorted(k for k in set(previous) | set(plan) if previous.get(k) != plan.get(k))
                raise LabelgenError(f"{out_dir}: holds features made with other settings ({', '.join(changed)} "
                                    "differ); use a new --out, or the same command to resume")
        else:
            atomic_write_json(plan_path, plan)
        writer = ShardWriter(out_dir)
        writer.clean_partial()
        done = writer.done_shards()
        todo = [s for s in range(shards) if s not in done]
        bar = progress_bar(sum(min(n, (s + 1) * config.shard_size) - s * config.shard_size for s in todo),
                           unit="image", desc="features", disable=not progress)
        started = time.perf_counter()
        try:
            for shard_id in todo:
                items = range(shard_id * config.shard_size, min(n, (shard_id + 1) * config.shard_size))
                writer.write_shard(shard_id, encoded=_encoded(teacher, source, items, config.batch_size, bar))
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        manifest = writer.write_manifest({**plan, "shards_planned": shards}, fmt=FEATURES_FORMAT)
    shapes = ", ".join(f"{lv['name']} {lv['channels']}x{lv['size'][0]}x{lv['size'][1]}" for lv in levels)
    log(f"levels: {shapes} (float16, {FeatureSet(out_dir).nbytes / 2**10:.1f} KiB per image)")
    return FeaturesSummary(n, len(manifest["shards"]), len(todo), seconds, manifest["bytes"], manifest)


def _encoded(teacher, source, items: range, batch_size: int, bar):
    """The tar members of ``items``, computed one batch at a time as the shard writer asks for them."""
    for start in range(items.start, items.stop, batch_size):
        batch = range(start, min(items.stop, start + batch_size))
        images = [source.image(i) for i in batch]
        features = teacher.features(recipes=[source.metas[i] for i in batch], images=images)
        levels = [f.to(torch.float16).cpu().numpy() for f in features]
        for k, image in enumerate(images):
            yield encode_features(pixels_sha256(image), [f[k] for f in levels])
        bar.update(len(batch))


class StoredFeatures:
    """A features set matched to a student's training items: ``read(i)`` gives item i's levels as float16
    tensors [C_i, h_i, w_i] (from a memory map; picklable for DataLoader workers)."""

    def __init__(self, path: Path | str, source, teacher_identity: tuple[str, list[int]] | None = None):
        self.set = FeatureSet(path)
        made = self.set.config.get("teacher") or {}
        self.generator_id, self.levels = made.get("generator"), list(made.get("levels") or [])
        if teacher_identity is not None:
            generator_id, levels = teacher_identity
            if (self.generator_id, self.levels) != (generator_id, list(levels)):
                raise LabelgenError(f"--features {path}: made by teacher {self.generator_id} (levels {self.levels}), "
                                    f"--teacher is {generator_id} (levels {list(levels)}); run `labelgen features` "
                                    "with this teacher")
        index = self.set.index()
        digests = image_digests(source)
        missing = [i for i, d in enumerate(digests) if d not in index]
        if missing:
            raise LabelgenError(f"--features {path}: no stored features for {len(missing)} of the {len(digests)} "
                                f"training images (first: {source.name(missing[0])}); run `labelgen features` "
                                "over these --data")
        self.where = [index[d] for d in digests]  # per training item: (shard number, byte offset)

    @property
    def channels(self) -> list[int]:
        return [c for c, _, _ in self.set.shapes]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [(h, w) for _, h, w in self.set.shapes]

    def read(self, i: int) -> list[torch.Tensor]:
        return [torch.from_numpy(a) for a in self.set.read(*self.where[i])]

"""Training data for the student: synthetic shard sets (random access) and real labelled folders.

Shard sets are read through the one shard codec, :mod:`labelgen.data.shards` (random access by tar
offsets; it decodes the image, mask, metadata and soft labels and refuses mask ids >= the class count).
Soft labels (what label distillation consumes): ``<key>.soft.npz`` as documented there, turned into
per-pixel probabilities by :func:`~labelgen.data.shards.soft_probabilities` (a pixel summing to 0
counts as ignored). Samples without soft labels fall back to the one-hot of the hard mask (a warning
says so once).
Per-sample uncertainty: ``meta["uncertainty"]`` (a number), optional sample weighting.

Resizing to the training size: the project's one rule (labelgen.imaging: images and soft labels area
when shrinking / bicubic when enlarging, masks nearest), the same rule evaluation and prediction use.
Augmentation (labelgen.student.augment: the ``basic`` and ``strong`` policies, applied jointly): image,
hard mask and soft labels go through the same geometric transforms; colour jitter touches the image only.
Each sample's augmentation is seeded by (seed, epoch, index), so a resumed run sees exactly the batches it
would have seen. Feature-distillation modes use only the resize + colour jitter (geometric augmentation
would misalign the generator's features).

Several sources in one run (``--data A --data B``): :class:`MultiSource` concatenates them (one
class list, checked by name; every image is resized to the training size anyway). With
``--data-weights`` the :class:`ResumableSampler` draws each source's samples ``weight`` times as
often as its size alone would: every epoch keeps the length of the concatenation, each source gets a
fixed quota (largest remainder of n * w_k n_k / sum_j w_j n_j), filled by cycling through shuffled
copies of the source, then the whole epoch is shuffled. A repeated draw gets its own augmentation
(the copy number is part of the seed). Everything is seeded by (seed, epoch), so resume and the
per-rank slicing work exactly as with one source.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from labelgen.data.classes import ClassList
from labelgen.data.io import IGNORE_INDEX
from labelgen.data.shards import ShardReader, is_shard_set, soft_probabilities
from labelgen.errors import DataError, LabelgenError
from labelgen.imaging import fit_photo, resize_image
from labelgen.student.augment import StrongAugment, build_augment


def one_hot(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """[H, W] ids (255 = ignore -> all zeros) -> float32 [H, W, C]."""
    out = np.zeros((*mask.shape, num_classes), np.float32)
    valid = mask != IGNORE_INDEX
    out[valid, mask[valid]] = 1.0
    return out


def crop_like(array: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """The crop ``box`` (top, left, height, width in a [shape] frame) of ``array`` [H, W, ...], scaled to its size
    (an image stored at another size than its mask: the same region)."""
    top, left, ch, cw = box
    sy, sx = array.shape[0] / shape[0], array.shape[1] / shape[1]
    y0, x0 = round(top * sy), round(left * sx)
    return array[y0:max(y0 + 1, round((top + ch) * sy)), x0:max(x0 + 1, round((left + cw) * sx))]


@dataclass
class RawSample:
    key: str
    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] uint8 (255 = ignore / unlabelled)
    meta: dict[str, Any]
    soft: np.ndarray | None  # [H, W, C] float32 or None


class ShardSource:
    """Random access to a shard set through the codec (:class:`~labelgen.data.shards.ShardReader`)."""

    def __init__(self, path: Path):
        self.reader = ShardReader(path)  # validates manifest / finished shards
        self.path = Path(path)
        self.classes = self.reader.classes
        self.shard_paths = [p for p, _ in self.reader.shards]
        locations = self.reader.locations()
        self.metas: list[dict[str, Any]] = [self.reader.read_meta(i) for i in range(len(locations))]
        self.soft_fraction = sum(where.has_soft for where in locations) / max(1, len(locations))

    def __len__(self) -> int:
        return len(self.metas)

    def load(self, i: int, num_classes: int) -> RawSample:
        sample = self.reader.read(i, num_classes)  # the codec refuses mask ids / soft labels beyond it
        soft = None if sample.soft is None else np.moveaxis(soft_probabilities(sample.soft), 0, -1)  # [H, W, C]
        return RawSample(sample.key, sample.image, sample.mask, sample.meta, soft)

    def image(self, i: int) -> np.ndarray:
        """Sample i's image alone (uint8 [H, W, 3])."""
        return self.reader.read_image(i)

    def name(self, i: int) -> str:
        return f"{self.path}: sample {self.reader.locations()[i].key}"


class FolderSource:
    """A real labelled folder (open_labelled); unlabelled images get an all-ignore mask."""

    def __init__(self, path: Path, require_masks: bool):
        from labelgen.data.folder import open_labelled

        self.path = Path(path)
        self.folder = open_labelled(path, require_masks=require_masks)
        self.classes = self.folder.classes
        self.metas = [{"source": "real"} for _ in range(len(self.folder))]
        self.soft_fraction = 0.0

    def __len__(self) -> int:
        return len(self.folder)

    def load(self, i: int, num_classes: int) -> RawSample:
        item = self.folder[i]
        mask = item.mask if item.mask is not None else np.full(item.image.shape[:2], IGNORE_INDEX, np.uint8)
        return RawSample(item.key, item.image, mask, {"source": "real"}, None)

    def image(self, i: int) -> np.ndarray:
        """Image i alone (uint8 [H, W, 3]; its mask is not read)."""
        from labelgen.data.io import read_image

        return read_image(self.folder.image_paths[i])

    def name(self, i: int) -> str:
        return str(self.folder.image_paths[i])


def open_source(path: Path | str, require_masks: bool = True) -> ShardSource | FolderSource:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: training data not found")
    if path.is_dir() and is_shard_set(path):
        return ShardSource(path)
    return FolderSource(path, require_masks)


class MultiSource:
    """Several sources back to back (global index = offset of its source + local index)."""

    def __init__(self, parts: list, fallback: ClassList | None = None):
        self.parts = parts
        self.sizes = [len(p) for p in parts]
        self.offsets = np.cumsum([0] + self.sizes).tolist()
        self.path = Path(getattr(parts[0], "path", "data"))
        self.classes = _agree_on_classes(parts, fallback)
        self.metas = [m for p in parts for m in p.metas]
        self.soft_fraction = sum(p.soft_fraction * n for p, n in zip(parts, self.sizes)) / max(1, sum(self.sizes))

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, i: int) -> tuple[int, int]:
        """Global index -> (source number, index inside it)."""
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return k, i - self.offsets[k]

    def load(self, i: int, num_classes: int) -> RawSample:
        k, j = self.locate(i)
        return self.parts[k].load(j, num_classes)

    def image(self, i: int) -> np.ndarray:
        k, j = self.locate(i)
        return self.parts[k].image(j)

    def name(self, i: int) -> str:
        k, j = self.locate(i)
        return self.parts[k].name(j)


def source_name(source) -> str:
    return str(getattr(source, "path", None) or getattr(getattr(source, "folder", None), "root", None) or "data")


def _agree_on_classes(parts: list, fallback: ClassList | None) -> ClassList | None:
    first = next((p for p in parts if p.classes is not None), None)
    for p in parts:
        if first is not None and p.classes is not None and list(p.classes.names) != list(first.classes.names):
            raise DataError(f"{source_name(p)}: classes {list(p.classes.names)} differ from {source_name(first)}'s "
                            f"{list(first.classes.names)}; every --data source needs the same class list")
    return first.classes if first is not None else fallback


def open_sources(paths, require_masks: bool = True):
    """One path (str/Path or a one-item list) -> that source, unchanged; several -> :class:`MultiSource`."""
    if isinstance(paths, (str, Path)):
        return open_source(paths, require_masks)
    paths = list(paths)
    if not paths:
        raise LabelgenError("no training data (--data)")
    if len(paths) == 1:
        return open_source(paths[0], require_masks)
    return MultiSource([open_source(path, require_masks) for path in paths])


class StudentDataset(Dataset):
    """Items for training/validation (indexed by (index, epoch) from :class:`ResumableSampler`, or an int).

    Returns dict: image float [3, H, W] (normalised), image_pm1 float [3, H, W] in [-1, 1],
    mask long [H, W], soft float [C, H, W] (zeros where ignored), weight float, index long; with
    ``want_plain_colour`` also image_plain [3, H, W]: the same geometric draw without the colour part; with
    ``features`` (labelgen.student.features.StoredFeatures) also features: the item's stored teacher levels,
    float16 [C_i, h_i, w_i] each."""

    def __init__(self, source, num_classes: int, image_size: tuple[int, int], mean, std, seed: int = 0,
                 augment: bool = True, geometric: bool = True, want_soft: bool = False,
                 uncertainty_weighting: bool = False, warn: bool = True, policy: str = "basic", colour: bool = True,
                 want_plain_colour: bool = False, features=None):
        self.source, self.num_classes, self.image_size = source, num_classes, tuple(image_size)
        self.features = features
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.std = np.asarray(std, np.float32) * 255.0
        self.seed, self.want_soft, self.want_plain_colour = seed, want_soft, want_plain_colour
        self.geo, self.col = build_augment(policy, geometric and augment, augment and colour)
        self.crop = StrongAugment() if policy == "strong" and geometric and augment else None
        self.weights = np.ones(len(source), np.float32)
        if uncertainty_weighting:
            u = np.asarray([float(m.get("uncertainty", 0.0)) for m in source.metas], np.float32)
            if u.mean() > 0:
                self.weights = 1.0 / (1.0 + u / u.mean())  # mean-uncertainty sample gets weight 1/2
                self.weights /= self.weights.mean()
        if want_soft and warn:
            _warn_missing_soft(source)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        """``item``: index, (index, epoch) or (index, epoch, copy) (copy: a repeated draw in one epoch)."""
        index, epoch, copy = (tuple(item) + (0, 0))[:3] if isinstance(item, tuple) else (item, 0, 0)
        raw = self.source.load(index, self.num_classes)
        soft = None
        if self.want_soft:
            soft = raw.soft if raw.soft is not None else one_hot(raw.mask, self.num_classes)
        seed = (self.seed * 1_000_003 + epoch * 7919 + index + copy * 104_729) % (2 ** 31)
        self.geo.set_random_seed(seed)
        self.col.set_random_seed(seed + 1)
        image, mask = raw.image, raw.mask
        if self.crop is not None:  # strong policy: crop at the sample's own resolution, one resize below
            box = self.crop.crop_box(*mask.shape[:2], np.random.default_rng(seed))
            image, soft = (None if a is None else crop_like(a, box, mask.shape[:2]) for a in (image, soft))
            mask = crop_like(mask, box, mask.shape[:2])
        image, mask = fit_photo(np.ascontiguousarray(image), self.image_size, np.ascontiguousarray(mask), notice=False)
        data = {"image": image, "mask": mask}  # the photo rule; no notice: the strong policy's crops are meant to vary
        if soft is not None:
            data["soft"] = resize_image(np.ascontiguousarray(soft), self.image_size)  # [H, W, C] float: the image rule
        out = self.geo(**data)
        image = self.col(image=out["image"])["image"]  # [H, W, 3] uint8
        h, w = self.image_size
        assert image.shape == (h, w, 3), image.shape
        item = {
            "image": self._normalise(image),
            "image_pm1": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 127.5 - 1.0,
            "mask": torch.from_numpy(out["mask"].astype(np.int64)),
            "weight": torch.tensor(float(self.weights[index])),
            "index": torch.tensor(index),
        }
        if self.want_plain_colour:  # the same geometric draw without the colour part (--consistency-weight)
            item["image_plain"] = self._normalise(out["image"])
        if self.features is not None:  # stored teacher features of the image (no geometric draw: still aligned)
            item["features"] = self.features.read(index)
        if soft is not None:
            s = np.asarray(out["soft"], np.float32).reshape(h, w, self.num_classes)
            item["soft"] = torch.from_numpy(np.ascontiguousarray(s.transpose(2, 0, 1)))
        return item


    def _normalise(self, image: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] -> float [3, H, W], (x - mean) / std."""
        x = (image.astype(np.float32) - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def _warn_missing_soft(source) -> None:
    """One warning per source whose samples lack soft labels (a labelled folder: its one-hot masks)."""
    if not hasattr(source, "parts"):
        if source.soft_fraction < 1.0:
            warnings.warn(f"{1 - source.soft_fraction:.0%} of the training samples carry no soft labels "
                          "(<key>.soft.npz); using the one-hot of their hard masks instead", stacklevel=3)
        return
    for part in source.parts:
        if isinstance(part, FolderSource):
            warnings.warn(f"{source_name(part)}: labelled folder, no soft labels; its masks are used as one-hot "
                          "targets", stacklevel=3)
        elif part.soft_fraction < 1.0:
            warnings.warn(f"{source_name(part)}: {1 - part.soft_fraction:.0%} of its samples carry no soft labels "
                          "(<key>.soft.npz); using the one-hot of their hard masks instead", stacklevel=3)


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """'1,1,4' -> [1.0, 1.0, 4.0] (one per --data source), None -> None."""
    if text is None or str(text).strip() == "":
        return None
    try:
        weights = [float(t) for t in str(text).split(",")]
    except ValueError:
        raise LabelgenError(f"--data-weights {text!r}: expected comma-separated numbers, e.g. 1,1,4") from None
    if len(weights) != count:
        raise LabelgenError(f"--data-weights has {len(weights)} value(s) for {count} --data source(s)")
    if any(not np.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise LabelgenError(f"--data-weights {text!r}: weights must be >= 0 and not all 0")
    return weights


def source_quotas(sizes: list[int], weights: list[float], total: int | None = None) -> list[int]:
    """Draws per source per epoch: ``total`` (default sum of sizes) split in proportion to
    weight x size, rounded by largest remainder (ties -> earlier source)."""
    total = sum(sizes) if total is None else total
    mass = [w * n for w, n in zip(weights, sizes)]
    exact = [total * m / sum(mass) for m in mass]
    quotas = [int(math.floor(e)) for e in exact]
    for k in sorted(range(len(sizes)), key=lambda k: (-(exact[k] - quotas[k]), k))[: total - sum(quotas)]:
        quotas[k] += 1
    return quotas


class ResumableSampler(Sampler):
    """Deterministic shuffled order per epoch, split across ranks; ``set_epoch(epoch, start_batch)``
    skips the batches a resumed run already trained on. Yields (index, epoch, copy).

    ``sizes`` + ``weights`` (several sources, concatenated in that order): weighted draws with a
    fixed quota per source and epoch (see the module docstring); equal weights = the plain order."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True,
                 sizes: list[int] | None = None, weights: list[float] | None = None):
        self.n, self.batch_size, self.rank, self.world, self.seed, self.shuffle = n, batch_size, rank, world, seed, shuffle
        self.sizes, self.weights = None, None
        if weights is not None and sizes is not None and len(set(weights)) > 1:
            if sum(sizes) != n or len(sizes) != len(weights):
                raise LabelgenError(f"sampler: {len(weights)} weights for sources of sizes {sizes} (n = {n})")
            self.sizes, self.weights = list(sizes), list(weights)
        self.per_rank = n // world  # drop the tail so every rank has the same count
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise LabelgenError(f"{n} training samples cannot fill one batch of {batch_size} on each of {world} "
                                "process(es); lower --batch-size")
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_draws(self) -> list[tuple[int, int]]:
        """The whole epoch (all ranks): (index, copy) pairs, ``n`` of them."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            perm = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
            return [(i, 0) for i in perm]
        draws: list[tuple[int, int]] = []
        offset = 0
        for size, quota in zip(self.sizes, source_quotas(self.sizes, self.weights, self.n)):
            copy = 0
            while quota > 0 and size > 0:
                perm = torch.randperm(size, generator=g).tolist() if self.shuffle else list(range(size))
                draws += [(offset + i, copy) for i in perm[:quota]]
                quota -= min(quota, size)
                copy += 1
            offset += size
        if self.shuffle:
            draws = [draws[i] for i in torch.randperm(len(draws), generator=g).tolist()]
        return draws

    def draws(self) -> list[tuple[int, int]]:
        """This rank's (index, copy) pairs for the current epoch, from ``start_batch`` on."""
        mine = self.epoch_draws()[self.rank: self.per_rank * self.world: self.world]
        return mine[self.start_batch * self.batch_size: self.batches_per_epoch * self.batch_size]

    def order(self) -> list[int]:
        return [i for i, _ in self.draws()]

    def __iter__(self):
        return iter([(i, self.epoch, copy) for i, copy in self.draws()])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def classes_of(source, fallback: ClassList | None = None) -> ClassList:
    if source.classes is not None:
        return source.classes
    if fallback is not None:
        return fallback
    raise DataError(f"{getattr(source, 'path', 'data')}: no class list (manifest without classes)")


def class_frequencies(source, num_classes: int, weights: list[float] | None = None, per_source: int = 256,
                      seed: int = 0) -> np.ndarray:
    """Each class's share [C] of the labelled pixels a run trains on (for ``--class-balance``).

    Counts the hard masks (teacher argmax for shard sets) of at most ``per_source`` samples per source,
    drawn with a fixed seed, and mixes the sources by their share of the draws (size x ``--data-weights``)."""
    parts = getattr(source, "parts", [source])
    weights = weights or [1.0] * len(parts)
    rng = np.random.default_rng(seed)
    total = np.zeros(num_classes, np.float64)
    for part, w in zip(parts, weights):
        n = len(part)
        picks = rng.choice(n, size=min(n, per_source), replace=False)
        counts = np.zeros(num_classes, np.float64)
        for i in picks:
            mask = part.load(int(i), num_classes).mask
            counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
        if counts.sum() > 0:
            total += (counts / counts.sum()) * n * w
    if total.sum() == 0:
        raise DataError("--class-balance: the training data has no labelled pixels")
    return total / total.sum()


# ---------------------------------------------------------------- the training loader
def default_loader_workers() -> int:
    """DataLoader worker processes for this machine (the default of ``student train --workers``).

    Decoding (PNG + soft-label npz), resizing and augmentation run in the workers, so the model never
    waits on them: every core this process may use, less two (the training loop and the rest of the
    system), split among the ranks of this node under torchrun (``LOCAL_WORLD_SIZE``), at most 12 each.
    A machine of 2 cores gets 0: loading runs in the training process, which on CPU is ~70x faster than
    the training step it feeds (docs/benchmarks.md)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(12, cpus // ranks - 2))


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """The training DataLoader (``student train`` and bench/bench_student.py's loader-only rate): ``workers``
    processes kept alive across epochs (the sampler runs in this process, so ``set_epoch`` reaches them),
    4 batches prefetched per worker, page-locked batches for the copy to a GPU (``pin_memory``)."""
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=True, **extra)

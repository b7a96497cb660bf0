"""Synthetic datasets as WebDataset tar shards: the one codec for a sample, writer, reader, resume.

Layout of a shard set (also readable by ``webdataset.WebDataset(sorted(glob("DIR/*.tar")))``)::

    DIR/000000.tar             samples in key order; each sample is a group of tar members
        <key>.png              RGB image
        <key>.mask.png         index mask (0..C-1, 255 = ignore), 8-bit grayscale PNG, so any decoder
                               (webdataset "l8"/"rgb8", PIL, OpenCV) yields the class ids
        <key>.json             metadata: seed/latent id, generator and head ids, uncertainty, ...
        <key>.soft.npz         optional soft labels: npz with array "probs" uint8 [C, H, W] (p = q / 255)
        <key>.<ext>            other optional extras, raw bytes
    DIR/000000.json            the shard's index: keys, sample count, bytes (written after the tar)
    DIR/manifest.json          the whole set: shard list, sample count, classes, producer config

Sample keys hold no '.': a member's key is its name up to the first '.', the rest is its extension.

Soft labels read (first match wins; :attr:`ShardSample.soft` is [C, H, W] either way):

    <key>.soft.npz   npz with one array: "probs" [C, H, W] (or [H, W, C]) uint8 (p = q / 255,
                     renormalised per pixel) or float16/float32, or "logits" (softmax is applied)
    <key>.soft.npy   one array, read like "probs"

:func:`soft_probabilities` turns them into float32 probabilities; a pixel whose probabilities sum to 0
(e.g. filtered as uncertain) counts as ignored (all zeros).

A set of stored teacher features (``labelgen features``; manifest format ``labelgen-features/1``) has the
same layout, shards, index files and resume rules, with one member per image: ``<key>.features.f16``, the
teacher's selected levels [C_i, h_i, w_i] as raw little-endian float16 back to back, ``key`` the sha256 of the
image's pixels (labelgen.data.io.pixels_sha256); the levels' shapes are in the manifest. Being uncompressed,
an image's features are read straight from a memory map of its shard (:class:`FeatureSet`).

Every decoding problem (corrupt PNG, bad JSON, a member name without a dot, a mask class id out of
range, soft labels of the wrong shape, a truncated tar or a member header claiming more bytes than the
file holds) is a :class:`DataError` naming the shard file and the member; so are two samples with one
key (:class:`ShardReader` refuses them, naming the keys) and a corrupt index file or manifest.

Crash safety and resume: a shard is written to ``NNNNNN.tar.<pid>.tmp`` and renamed when complete,
then its index file is written atomically. A shard counts as done only when both exist, so after a
kill at any moment a re-run sees exactly the finished shards (no duplicate, no missing, no corrupt
shard) and redoes the rest. Shard ``i`` always holds the same work items, so shards are independent
units that several workers can write in parallel (disjoint shard ids). ``manifest.json`` is written
last: a set without it is unfinished (:func:`shard_set_status`).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelgen.data.classes import ClassList
from labelgen.data.io import (IMAGE_ERRORS, atomic_write_json, check_mask, decode_png, is_count, png_bytes,
                              read_json, resolve_inside)
from labelgen.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "labelgen-shards/1"
CORE_EXTS = ("png", "mask.png", "json")  # every sample has these members
SOFT_EXT = "soft.npz"  # what the writer stores soft labels as
SOFT_EXTS = (SOFT_EXT, "soft.npy")  # what the reader accepts, first match wins
FEATURES_FORMAT = "labelgen-features/1"  # a set of stored teacher features (`labelgen features`), not samples
FEATURES_EXT = "features.f16"  # an image's teacher levels [C_i, h_i, w_i], raw little-endian float16, back to back
FEATURES_DTYPE = np.dtype("<f2")
SET_KINDS = {FORMAT: "a shard set of samples", FEATURES_FORMAT: "a set of stored teacher features (labelgen features)"}


def shard_name(shard_id: int) -> str:
    return f"{shard_id:06d}.tar"


@dataclass
class ShardSample:
    key: str
    image: np.ndarray  # [H, W, 3] uint8
    mask: np.ndarray  # [H, W] uint8
    meta: dict[str, Any]
    extras: dict[str, bytes] = field(default_factory=dict)  # other members: extension -> raw bytes
    soft: np.ndarray | None = None  # [C, H, W] soft labels as stored: uint8 (p = q / 255) or float; None = none


# ---------------------------------------------------------------- encoding
def encode_soft(soft: np.ndarray) -> bytes:
    """Deterministic ``.soft.npz`` (fixed zip timestamps) holding "probs" [C, H, W] (uint8 as written by
    ``labelgen synthesize``)."""
    array_buf = io.BytesIO()
    np.lib.format.write_array(array_buf, np.ascontiguousarray(soft), allow_pickle=False)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        info = zipfile.ZipInfo("probs.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, array_buf.getvalue(), compresslevel=1)
    return out.getvalue()


def _check_key(key: str) -> None:
    if "." in key or "/" in key or not key:
        raise ValueError(f"sample keys must be non-empty, without '.' or '/': {key!r}")


def encode_sample(sample: ShardSample) -> list[tuple[str, bytes]]:
    """Tar members of one sample (PNG encoding is the costly part: callers may do it in workers)."""
    key, hw = sample.key, sample.mask.shape
    _check_key(key)
    if sample.image.ndim != 3 or sample.image.shape[:2] != hw or sample.mask.ndim != 2:
        raise ValueError(f"sample {key}: image {sample.image.shape} and mask {hw} must be [H, W, 3] and [H, W]")
    extras = dict(sample.extras)
    if sample.soft is not None:
        if sample.soft.ndim != 3 or sample.soft.shape[1:] != hw:
            raise ValueError(f"sample {key}: soft labels {sample.soft.shape} must be [C, {hw[0]}, {hw[1]}]")
        if SOFT_EXT in extras:
            raise ValueError(f"sample {key}: soft labels given twice (soft and extras[{SOFT_EXT!r}])")
        extras[SOFT_EXT] = encode_soft(sample.soft)
    members = [
        (f"{key}.png", png_bytes(sample.image)),
        (f"{key}.mask.png", png_bytes(sample.mask)),
        (f"{key}.json", json.dumps(sample.meta, sort_keys=True).encode()),
    ]
    members += [(f"{key}.{ext}", payload) for ext, payload in sorted(extras.items())]
    return members


# ---------------------------------------------------------------- decoding
def split_member(name: str, shard: Path | str) -> tuple[str, str]:
    """Tar member name -> (key, extension)."""
    key, dot, ext = name.partition(".")
    if not dot or not key or not ext or "/" in key:
        raise DataError(f"{shard}: member {name!r} is not named <key>.<ext>")
    return key, ext


def _decode_png(payload: bytes, where: str, mask: bool = False) -> np.ndarray:
    try:
        return decode_png(payload, mask=mask)
    except IMAGE_ERRORS as e:
        raise DataError(f"{where}: corrupt PNG ({type(e).__name__})") from None


def _decode_meta(payload: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: invalid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(meta).__name__}")
    return meta


def decode_soft(payload: bytes, ext: str, hw: tuple[int, int], where: str) -> np.ndarray:
    """A soft-label member -> [C, H, W]: "probs" as stored (dtype kept), "logits" as float32 softmax."""
    try:
        loaded = np.load(io.BytesIO(payload), allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            array, kind = loaded, "probs"
        else:
            names = list(loaded.files)
            kind = "logits" if "logits" in names else "probs" if "probs" in names else names[0]
            array = loaded[kind]
    except (ValueError, OSError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: unreadable soft labels ({type(e).__name__}: {e})") from None
    if array.ndim == 3 and array.shape[1:] != tuple(hw) and array.shape[:2] == tuple(hw):
        array = np.moveaxis(array, -1, 0)  # [H, W, C] -> [C, H, W]
    if array.ndim != 3 or array.shape[1:] != tuple(hw) or array.shape[0] < 1:
        raise DataError(f"{where}: soft labels have shape {list(array.shape)}, expected [C, {hw[0]}, {hw[1]}]")
    if not (np.issubdtype(array.dtype, np.floating) or array.dtype == np.uint8):
        raise DataError(f"{where}: soft labels of dtype {array.dtype} (expected uint8 or float)")
    if kind == "logits":
        z = array.astype(np.float32)
        z = np.exp(z - z.max(0, keepdims=True))
        return z / z.sum(0, keepdims=True)
    return array


def soft_probabilities(soft: np.ndarray) -> np.ndarray:
    """Stored soft labels [C, H, W] -> float32 probabilities [C, H, W] (uint8 q -> q / 255, renormalised
    per pixel; a pixel summing to 0 stays all zeros = ignored)."""
    p = soft.astype(np.float32) / (255.0 if soft.dtype == np.uint8 else 1.0)
    total = p.sum(0, keepdims=True)
    return np.divide(p, total, out=np.zeros_like(p), where=total > 0)


def decode_sample(key: str, group: dict[str, bytes], shard: Path | str, decode: bool = True,
                  num_classes: int | None = None) -> ShardSample:
    """The members of one sample (extension -> bytes) -> :class:`ShardSample`.

    ``decode=False``: only the metadata is decoded; image/mask are empty and every other member stays
    raw bytes in ``extras``. ``num_classes``: refuse mask ids >= it (255 = ignore) and soft labels with
    another class count."""
    for ext in CORE_EXTS:
        if ext not in group:
            raise DataError(f"{shard}: sample {key} has no member {key}.{ext}")
    meta = _decode_meta(group["json"], f"{shard}: {key}.json")
    if not decode:
        return ShardSample(key, np.empty((0, 0, 3), np.uint8), np.empty((0, 0), np.uint8), meta,
                           {ext: v for ext, v in group.items() if ext != "json"})
    image = _decode_png(group["png"], f"{shard}: {key}.png")
    mask = _decode_png(group["mask.png"], f"{shard}: {key}.mask.png", mask=True)
    check_mask(mask, image.shape, 256 if num_classes is None else num_classes, f"{shard}: {key}.mask.png")
    soft_ext = next((ext for ext in SOFT_EXTS if ext in group), None)
    soft = None
    if soft_ext is not None:
        where = f"{shard}: {key}.{soft_ext}"
        soft = decode_soft(group[soft_ext], soft_ext, mask.shape, where)
        if num_classes is not None and soft.shape[0] != num_classes:
            raise DataError(f"{where}: soft labels for {soft.shape[0]} classes, the data has {num_classes}")
    extras = {ext: v for ext, v in group.items() if ext not in (*CORE_EXTS, soft_ext)}
    return ShardSample(key, image, mask, meta, extras, soft)


def iter_shard(path: Path, decode: bool = True, num_classes: int | None = None) -> Iterator[ShardSample]:
    """Samples of one tar shard, in order (streamed)."""
    tar = _open_tar(path)
    with tar:
        current: str | None = None
        group: dict[str, bytes] = {}
        for member in _members(tar, path):
            key, ext = split_member(member.name, path)
            if current is not None and key != current:
                yield decode_sample(current, group, path, decode, num_classes)
                group = {}
            if ext in group:
                raise duplicate_keys(path, [key])
            current = key
            try:
                group[ext] = tar.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DataError(f"{path}: unreadable shard ({e})") from None
        if current is not None:
            yield decode_sample(current, group, path, decode, num_classes)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: unreadable shard ({e})") from None


def _members(tar: tarfile.TarFile, path: Path) -> Iterator[tarfile.TarInfo]:
    """The file members of an open shard (a truncated or corrupt tar, a member whose header claims more
    bytes than the file holds -> one-line DataError, before anything is read or allocated for it)."""
    # an uncompressed shard's member data lies inside the file (tarfile reads a compressed one as a stream)
    size = os.fstat(tar.fileobj.fileno()).st_size if isinstance(tar.fileobj, io.BufferedReader) else None
    try:
        for member in tar:
            if member.isfile():
                if size is not None and member.offset_data + member.size > size:
                    raise DataError(f"{path}: member {member.name} claims {member.size} bytes, past the end of the "
                                    f"{size}-byte file (truncated or corrupt shard)")
                yield member
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: unreadable shard ({e})") from None


def duplicate_keys(where: Path | str, keys: list[str]) -> DataError:
    """The one line refusing a shard set whose samples share keys (a sample would be trained on or exported
    twice, and a key no longer names one sample)."""
    shown = ", ".join(sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
    return DataError(f"{where}: duplicate sample keys {shown} (each sample needs its own key)")


# ---------------------------------------------------------------- writing
def finished_shards(folder: Path | str) -> set[int]:
    """Ids of the finished shards in ``folder`` (tar and its index both present)."""
    folder = Path(folder)
    return {int(index.stem) for index in folder.glob("[0-9]" * 6 + ".json")
            if (folder / (index.stem + ".tar")).is_file()}


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


class ShardWriter:
    """Writes shards of a set; ``done_shards()`` tells a resumed run what is already finished."""

    def __init__(self, out_dir: Path | str, classes: ClassList | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.classes = classes

    def done_shards(self) -> set[int]:
        return finished_shards(self.out_dir)

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

    def write_manifest(self, config: dict | None = None, fmt: str = FORMAT) -> dict:
        """Summarise all finished shards into manifest.json (call once, after all workers are done); ``fmt``:
        what the shards hold (samples, or FEATURES_FORMAT: stored teacher features)."""
        shards = [read_shard_index(self.out_dir, i) for i in sorted(self.done_shards())]
        manifest = {
            "format": fmt,
            "shards": [{k: s[k] for k in ("shard", "count", "bytes")} for s in shards],
            "num_samples": sum(s["count"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "classes": self.classes.to_json()["classes"] if self.classes else None,
            "config": config or {},
        }
        atomic_write_json(self.out_dir / MANIFEST, manifest)
        return manifest


# ---------------------------------------------------------------- reading
def read_manifest(path: Path | str, fmt: str = FORMAT) -> dict:
    """manifest.json of a finished set of ``fmt`` (samples by default); another format is one line naming both."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise DataError(f"{path}: not a finished shard set (no {MANIFEST}; is synthesis still running?)")
    manifest = read_json(path / MANIFEST)
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != fmt:
        what = SET_KINDS.get(found, f"unknown format {found!r}")
        raise DataError(f"{path / MANIFEST}: {what}, not {SET_KINDS[fmt]}")
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("shard"), str)
                                               and is_count(s.get("count")) for s in shards) \
            or not isinstance(manifest.get("config", {}), dict):
        raise DataError(f'{path / MANIFEST}: corrupt manifest ("shards" must list {{"shard": file name, "count": '
                        f'integer >= 0}}, "config" be an object)')
    for s in shards:  # the shard files it names lie in the set's folder
        try:
            resolve_inside(path, s["shard"])
        except DataError as e:
            raise DataError(f"{path / MANIFEST}: shard {e}") from None
    return manifest


def read_shard_index(folder: Path | str, shard_id: int) -> dict:
    """The index file of shard ``shard_id`` (``NNNNNN.json``), checked: an object with "shard" (its tar's name),
    "count" and "bytes" (integers >= 0)."""
    path = Path(folder) / f"{shard_id:06d}.json"
    index = read_json(path)
    if not isinstance(index, dict) or not isinstance(index.get("shard"), str) \
            or not (is_count(index.get("count")) and is_count(index.get("bytes"))):
        raise DataError(f'{path}: corrupt shard index (expected an object with "shard", "count" and "bytes")')
    return index


def is_shard_set(path: Path | str) -> bool:
    path = Path(path)
    return (path / MANIFEST).is_file() or any(path.glob("*.tar"))


@dataclass
class ShardSetStatus:
    """How far a shard set is: finished shards, the producer's plan (when known), the manifest."""

    path: Path
    finished: int  # shards with tar + index
    samples: int  # in the finished shards
    planned: int | None  # shards the producer planned (manifest config "shards_planned", or given)
    has_manifest: bool

    @property
    def complete(self) -> bool:
        return self.has_manifest and (self.planned is None or self.finished >= self.planned)

    def describe(self) -> str:
        if self.complete:
            return f"shard set {self.path}: complete, {self.finished} shards, {self.samples} samples"
        of = f" of {self.planned}" if self.planned is not None else " (planned count unknown)"
        why = ("manifest.json lists fewer shards than planned" if self.has_manifest else
               "no manifest.json yet: the synthesis is still running or was stopped (run the same command again "
               "to resume)")
        return (f"shard set {self.path}: unfinished, {self.finished}{of} shards done ({self.samples} samples so "
                f"far); {why}")


def shard_set_status(path: Path | str, planned: int | None = None) -> ShardSetStatus:
    """Status of the shard set in ``path``; ``planned``: the shard count its producer planned, if known
    (the manifest's ``config.shards_planned`` is used when present)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: shard folder not found")
    has_manifest = (path / MANIFEST).is_file()
    if has_manifest:
        recorded = read_manifest(path).get("config", {}).get("shards_planned")
        planned = recorded if is_count(recorded) else planned
    done = sorted(finished_shards(path))
    samples = sum(read_shard_index(path, i)["count"] for i in done)
    return ShardSetStatus(path, len(done), samples, planned, has_manifest)


@dataclass(frozen=True)
class SampleLocation:
    """Where one sample's members lie: shard file, key, extension -> (byte offset, size) in the tar."""

    shard: Path
    key: str
    members: dict[str, tuple[int, int]]

    @property
    def has_soft(self) -> bool:
        return any(ext in self.members for ext in SOFT_EXTS)


class ShardReader:
    """The samples of a shard set: in order (iteration; ``start`` skips that many, to resume a consumer)
    or by index (:meth:`locations`, :meth:`read`, :meth:`read_meta`: random access by tar offsets).

    Uses manifest.json when present, else every finished shard (tar + index) found in the folder.
    ``num_classes`` (default: the manifest's class count): mask ids and soft labels are checked against it."""

    def __init__(self, path: Path | str, start: int = 0, decode: bool = True, num_classes: int | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: shard folder not found")
        if (self.path / MANIFEST).is_file():
            manifest = read_manifest(self.path)
            self.shards = [(self.path / s["shard"], s["count"]) for s in manifest["shards"]]
            self.classes = (ClassList.from_json({"classes": manifest["classes"]}, str(self.path / MANIFEST))
                            if manifest.get("classes") else None)
        else:
            self.shards = [(self.path / shard_name(i), read_shard_index(self.path, i)["count"])
                           for i in sorted(finished_shards(self.path))]
            self.classes = None
        if not self.shards:
            raise DataError(f"{self.path}: no finished shards")
        self.start = start
        self.decode = decode
        self.num_classes = num_classes if num_classes is not None else len(self.classes) if self.classes else None
        self._locations: list[SampleLocation] | None = None

    def __len__(self) -> int:
        return max(0, sum(n for _, n in self.shards) - self.start)

    def __iter__(self) -> Iterator[ShardSample]:
        skip = self.start
        seen: dict[str, Path] = {}  # key -> its shard
        for path, count in self.shards:
            if skip >= count:
                skip -= count
                continue
            for i, sample in enumerate(iter_shard(path, self.decode, self.num_classes)):
                if sample.key in seen:  # in an earlier shard, or earlier in this one
                    raise duplicate_keys(", ".join(dict.fromkeys(map(str, (seen[sample.key], path)))), [sample.key])
                seen[sample.key] = path
                if i >= skip:
                    yield sample
            skip = 0

    def locations(self) -> list[SampleLocation]:
        """Every sample's members (tar headers only, read once), in order; ``start`` does not apply."""
        if self._locations is None:
            self._locations = []
            seen: set[str] = set()
            repeated: list[str] = []  # keys of more than one sample: refused
            for path, _count in self.shards:
                groups: dict[str, dict[str, tuple[int, int]]] = {}
                with _open_tar(path) as tar:
                    for m in _members(tar, path):
                        key, ext = split_member(m.name, path)
                        if ext in groups.setdefault(key, {}):
                            repeated.append(key)
                        groups[key][ext] = (m.offset_data, m.size)
                repeated += [key for key in groups if key in seen]
                seen.update(groups)
                for key, members in groups.items():
                    for ext in CORE_EXTS:
                        if ext not in members:
                            raise DataError(f"{path}: sample {key} has no member {key}.{ext}")
                    self._locations.append(SampleLocation(path, key, members))
            if repeated:
                self._locations = None
                raise duplicate_keys(self.path, list(dict.fromkeys(repeated)))
        return self._locations

    def _member_bytes(self, where: SampleLocation, exts: Iterable[str]) -> dict[str, bytes]:
        out = {}
        with open(where.shard, "rb") as f:
            for ext in exts:
                offset, size = where.members[ext]
                f.seek(offset)
                out[ext] = f.read(size)
                if len(out[ext]) != size:
                    raise DataError(f"{where.shard}: {where.key}.{ext} is truncated")
        return out

    def read(self, i: int, num_classes: int | None = None) -> ShardSample:
        """Sample ``i`` of :meth:`locations`, decoded as the reader decodes; ``num_classes`` (default: the
        reader's) bounds its mask ids and soft labels."""
        where = self.locations()[i]
        group = self._member_bytes(where, where.members)
        return decode_sample(where.key, group, where.shard, self.decode,
                             self.num_classes if num_classes is None else num_classes)

    def read_meta(self, i: int) -> dict[str, Any]:
        """The metadata (``<key>.json``) of sample ``i`` alone."""
        where = self.locations()[i]
        return _decode_meta(self._member_bytes(where, ["json"])["json"], f"{where.shard}: {where.key}.json")

    def read_image(self, i: int) -> np.ndarray:
        """The image (uint8 [H, W, 3]) of sample ``i`` alone: neither its mask nor its soft labels are decoded."""
        where = self.locations()[i]
        return _decode_png(self._member_bytes(where, ["png"])["png"], f"{where.shard}: {where.key}.png")


# ---------------------------------------------------------------- stored teacher features
def encode_features(key: str, levels: list[np.ndarray]) -> list[tuple[str, bytes]]:
    """The tar member of one image's stored teacher features: ``<key>.features.f16``, its levels [C_i, h_i, w_i]
    as little-endian float16 back to back (their shapes are in the set's manifest, the same for every image)."""
    _check_key(key)
    return [(f"{key}.{FEATURES_EXT}", b"".join(np.ascontiguousarray(f, FEATURES_DTYPE).tobytes() for f in levels))]


class FeatureSet:
    """A finished set of stored teacher features (``labelgen features``), read by memory map.

    manifest.json: format FEATURES_FORMAT, the shards, and config["levels"]: per level {"name", "index",
    "channels", "size": [h, w], "stride"}. :meth:`index` maps every image key to where its bytes lie;
    :meth:`read` returns its levels as float16 arrays. The maps are opened lazily in each process (DataLoader
    workers too: a pickled FeatureSet carries no open map)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"{self.path}: features folder not found")
        manifest = read_manifest(self.path, FEATURES_FORMAT)
        self.config: dict[str, Any] = manifest.get("config") or {}
        try:
            self.shapes = [(int(lv["channels"]), int(lv["size"][0]), int(lv["size"][1]))
                           for lv in self.config["levels"]]
        except (KeyError, TypeError, ValueError, IndexError):
            raise DataError(f"{self.path / MANIFEST}: no valid \"levels\" (channels, size) in its config") from None
        self.counts = [int(np.prod(shape)) for shape in self.shapes]
        self.nbytes = sum(self.counts) * FEATURES_DTYPE.itemsize
        self.shards = [self.path / s["shard"] for s in manifest["shards"]]
        self._maps: dict[int, np.memmap] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": {}}

    def index(self) -> dict[str, tuple[int, int]]:
        """Image key -> (shard number, byte offset of its features) from the tar headers; a member of another
        kind or size is refused naming the shard."""
        where: dict[str, tuple[int, int]] = {}
        for n, shard in enumerate(self.shards):
            with _open_tar(shard) as tar:
                for member in _members(tar, shard):
                    key, ext = split_member(member.name, shard)
                    if ext != FEATURES_EXT or member.size != self.nbytes:
                        raise DataError(f"{shard}: member {member.name} ({member.size} bytes) is not stored features "
                                        f"of the manifest's levels (<key>.{FEATURES_EXT}, {self.nbytes} bytes)")
                    where[key] = (n, member.offset_data)
        return where

    def read(self, shard: int, offset: int) -> list[np.ndarray]:
        """The levels [C_i, h_i, w_i] (float16 copies) stored at ``offset`` of shard number ``shard``."""
        mapped = self._maps.get(shard)
        if mapped is None:
            try:
                mapped = self._maps[shard] = np.memmap(self.shards[shard], dtype=np.uint8, mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"{self.shards[shard]}: unreadable features shard ({type(e).__name__})") from None
        raw = mapped[offset:offset + self.nbytes]
        if raw.size != self.nbytes:
            raise DataError(f"{self.shards[shard]}: truncated (features at byte {offset} end early)")
        flat = raw.view(FEATURES_DTYPE)
        out, start = [], 0
        for shape, count in zip(self.shapes, self.counts):
            out.append(np.array(flat[start:start + count]).reshape(shape))
            start += count
        return out

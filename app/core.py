"""The app's logic without Streamlit: mask codec, path safety, uploads, review store, sampling.

Everything here is plain Python + numpy so it is tested directly; the pages (``labelgen.app.views``)
only wire it to widgets. Paths and ids that come from the browser always go through
:func:`resolve_inside` / :meth:`Workspace.check_id`, so nothing the browser sends can name a file
outside the workspace (or, for imports, outside the allowed roots).
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelgen.data.io import IGNORE_INDEX, atomic_write_json, list_images, png_bytes, read_json
from labelgen.errors import LabelgenError
from labelgen.workspace import Workspace

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # per uploaded image (the server's maxUploadSize is set to match)
MAX_UPLOAD_PIXELS = 40_000_000  # decompression-bomb guard for uploads and imported files
MAX_IMPORT_FILES = 500  # per folder import
REVIEW_FILE = "review.json"
ACCEPTED, REJECTED = "accepted", "rejected"
IMPORT_ROOTS_ENV = "LABELGEN_APP_IMPORT_ROOTS"  # os.pathsep-separated extra folders the import box may read
STATUS_SUFFIX = ".status.json"  # W/annotations/<id>.status.json: the annotator's confirmation
UNLABELLED, PARTLY, DONE = "unlabelled", "partly", "done"


class AppError(LabelgenError):
    """A user-facing problem shown in the page (bad path, bad upload, ...)."""


# ---------------------------------------------------------------- mask codec (component <-> numpy)
def rle_encode(mask: np.ndarray, dtype=np.uint8) -> list[int]:
    """Row-major run-length pairs ``[value, count, value, count, ...]`` of a uint8 mask (or of an integer
    label map, e.g. superpixels, with ``dtype=np.int32``)."""
    flat = np.asarray(mask, dtype=dtype).ravel()
    if flat.size == 0:
        return []
    change = np.flatnonzero(np.diff(flat.astype(np.int64))) + 1
    starts = np.concatenate([[0], change])
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    out = np.empty(2 * len(starts), dtype=np.int64)
    out[0::2] = flat[starts]
    out[1::2] = counts
    return out.tolist()


def rle_decode(rle: Any, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """Inverse of :func:`rle_encode`, validated: the right pixel count and only class ids or 255."""
    h, w = shape
    if not isinstance(rle, (list, tuple)) or len(rle) % 2:
        raise AppError("mask from the browser: expected run-length pairs")
    # checked as Python ints (no int64 wrap-around: runs of 2**62 must not sum to h*w), floats, bools and
    # strings refused, before numpy sees a single count
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in rle):
        raise AppError("mask from the browser: non-integer run-length data")
    values, counts = rle[0::2], rle[1::2]
    # runs are named by position: a 5000-digit number is not printable in an error line
    bad = next((k for k, c in enumerate(counts) if not 0 <= c <= h * w), None)
    if bad is not None:
        raise AppError(f"mask from the browser: run {bad} has a length outside 0..{h * w}")
    if sum(counts) != h * w:
        raise AppError(f"mask from the browser: {sum(counts)} pixels, expected {h}x{w}")
    bad = next((k for k, v in enumerate(values) if not (0 <= v < num_classes or v == IGNORE_INDEX)), None)
    if bad is not None:
        raise AppError(f"mask from the browser: run {bad} has a class id out of range "
                       f"(classes 0..{num_classes - 1}, {IGNORE_INDEX} = ignore)")
    return np.repeat(np.array(values, dtype=np.uint8), np.array(counts, dtype=np.int64)).reshape(h, w)


def mask_from_component(value: Any, doc: str, shape: tuple[int, int], num_classes: int) -> np.ndarray | None:
    """The edited mask in a canvas component value, or None when the value belongs to another document."""
    if not isinstance(value, dict) or value.get("doc") != doc:
        return None
    if (value.get("height"), value.get("width")) != tuple(shape):
        raise AppError(f"mask from the browser has size {value.get('width')}x{value.get('height')}, "
                       f"expected {shape[1]}x{shape[0]}")
    return rle_decode(value.get("rle"), shape, num_classes)


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(np.ascontiguousarray(image, dtype=np.uint8))).decode()


# ---------------------------------------------------------------- paths
def resolve_inside(root: Path, user_path: str | os.PathLike, *, must_exist: bool = True) -> Path:
    """``user_path`` (absolute, or relative to ``root``) resolved with symlinks; refused unless it is
    ``root`` or below it. The one gate for every path typed or sent from the browser."""
    root = Path(root).resolve()
    text = str(user_path).strip()
    if not text or "\x00" in text:
        raise AppError("empty or invalid path")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise AppError(f"{text}: outside {root}")
    if must_exist and not resolved.exists():
        raise AppError(f"{text}: not found")
    return resolved


def resolve_in_roots(roots: list[Path], user_path: str) -> Path:
    """``user_path`` inside one of the allowed ``roots`` (first that contains it), else AppError."""
    errors = []
    text = str(user_path).strip()
    for root in roots:
        if not Path(text).expanduser().is_absolute() and root != roots[0]:
            continue  # relative paths are relative to the first root (the workspace)
        try:
            return resolve_inside(root, text)
        except AppError as e:
            errors.append(str(e))
    raise AppError(f"{text}: not inside the allowed folders ({', '.join(str(r) for r in roots)})"
                   if not any("not found" in e for e in errors) else f"{text}: not found")


def allowed_roots(ws: Workspace, extra: list[str] | None = None) -> list[Path]:
    """Folders the import box may read: the workspace, plus ``--import-root`` / LABELGEN_APP_IMPORT_ROOTS."""
    roots = [ws.root]
    env = os.environ.get(IMPORT_ROOTS_ENV, "")
    for item in list(extra or []) + [p for p in env.split(os.pathsep) if p]:
        path = Path(item).expanduser().resolve()
        if path.is_dir() and path not in roots:
            roots.append(path)
    return roots


# ---------------------------------------------------------------- images in
def decode_image_bytes(payload: bytes, name: str = "upload", max_bytes: int = MAX_UPLOAD_BYTES) -> np.ndarray:
    """Validate untrusted image bytes (size, real image, pixel count) -> uint8 [H, W, 3]."""
    if len(payload) > max_bytes:
        raise AppError(f"{name}: {len(payload) / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit")
    if not payload:
        raise AppError(f"{name}: empty file")
    try:
        with Image.open(io.BytesIO(payload)) as im:
            if im.format not in ("PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"):
                raise AppError(f"{name}: unsupported image format {im.format}")
            if im.width * im.height > MAX_UPLOAD_PIXELS:
                raise AppError(f"{name}: {im.width}x{im.height} is too large")
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except AppError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise AppError(f"{name}: not a readable image") from None


def import_real_images(ws: Workspace, images: list[tuple[str, np.ndarray]],
                       masks: dict[str, np.ndarray] | None = None) -> tuple[list[str], list[str]]:
    """Store real images (+ their index masks by image name) as annotations with ``source: real``, as
    `labelgen import` does (Workspace.add_photos: the one photo rule, all or nothing); returns (ids, the
    notices of photos stretched far out of proportion, labelgen.imaging.aspect_notice)."""
    from labelgen.imaging import aspect_notice

    check_import_real(ws)
    notices = [f"{name}: {n}" for name, image in images if (n := aspect_notice(image.shape[:2], ws.resolution))]
    ids, _ = ws.add_photos((image, (masks or {}).get(name), {"source": "real", "original_name": Path(name).name[:200]})
                           for name, image in images)
    return ids, notices


def folder_masks(ws: Workspace, roots: list[Path], folder: str, masks_folder: str,
                 images: list[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Index masks of a folder's images from a masks folder inside the allowed roots, named and read as
    `labelgen import --masks` reads them (Workspace.import_mask: <stem>.png or <stem>.mask.png, checked)."""
    path = resolve_in_roots(roots, masks_folder)
    if not path.is_dir():
        raise AppError(f"{masks_folder}: not a folder")
    if any(f.resolve().parent != path for f in path.iterdir() if f.is_file()):
        raise AppError(f"{masks_folder}: holds links to files elsewhere")
    images_path = resolve_in_roots(roots, folder)
    found = {name: ws.import_mask(images_path / name, path, image.shape) for name, image in images}
    return {name: mask for name, mask in found.items() if mask is not None}


def folder_images(ws: Workspace, roots: list[Path], folder: str) -> list[tuple[str, np.ndarray]]:
    """Images of a folder inside the allowed roots (validated like uploads)."""
    path = resolve_in_roots(roots, folder)
    if not path.is_dir():
        raise AppError(f"{folder}: not a folder")
    files = list_images(path)[:MAX_IMPORT_FILES]
    if not files:
        raise AppError(f"{folder}: no images")
    out = []
    for f in files:
        if f.resolve().parent != path:  # a symlinked file pointing elsewhere
            continue
        out.append((f.name, decode_image_bytes(f.read_bytes(), f.name, max_bytes=4 * MAX_UPLOAD_BYTES)))
    return out


def check_import_real(ws: Workspace) -> None:
    """Refuse importing photos in the app (one line, labelgen.teacher.require_image_encoding) where the teacher
    does not encode them (GAN teachers: `labelgen import` inverts them, a while per photo)."""
    from labelgen.generators import generator_class
    from labelgen.teacher import require_image_encoding

    require_image_encoding(generator_class(ws.config.backend), "importing photos here (dcgan, stylegan2: `labelgen "
                           "import -w W --images DIR` projects each into the latent space, a while per photo)")


# ---------------------------------------------------------------- generating
def generate_into_workspace(ws: Workspace, n: int) -> list[str]:
    """Sample ``n`` new images from the workspace generator and store them with their recipes
    (the workspace's own sampler, the same as `labelgen sample`)."""
    return ws.sample_annotations(n)


# ---------------------------------------------------------------- annotation status and statistics
@dataclass
class ImageProgress:
    """One annotation image as the annotator sees it: how much is labelled and whether they confirmed it."""
    annotation_id: str
    status: str  # UNLABELLED (no labelled pixel), PARTLY (labelled, not confirmed) or DONE (confirmed)
    labelled: int  # pixels with a class (not 255 = unlabelled)
    pixels: int  # pixels of the image
    counts: np.ndarray  # labelled pixels per class
    edited: bool = False  # marked done, but the mask changed since: needs confirming again

    @property
    def fraction(self) -> float:
        return self.labelled / self.pixels if self.pixels else 0.0


_PROGRESS: dict[tuple[str, str], tuple[tuple, ImageProgress]] = {}


def status_path(ws: Workspace, annotation_id: str) -> Path:
    """The per-image status sidecar ``W/annotations/<id>.status.json`` (absent: not confirmed)."""
    return ws.annotations_dir / f"{ws.check_id(annotation_id)}{STATUS_SUFFIX}"


def _mask_digest(mask: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask, np.uint8).tobytes() + repr(mask.shape).encode()).hexdigest()


def mark_done(ws: Workspace, annotation_id: str) -> ImageProgress:
    """Record that the annotator confirmed the saved mask of ``annotation_id`` (its digest, so a later change
    to the mask, in the app or outside it, makes the image unconfirmed again)."""
    mask = ws.read_mask(annotation_id)
    if mask is None or not (mask != IGNORE_INDEX).any():
        raise AppError(f"{annotation_id}: nothing labelled yet; paint the mask before marking it done")
    atomic_write_json(status_path(ws, annotation_id),
                      {"version": 1, "status": DONE, "mask_sha256": _mask_digest(mask), "confirmed": time.time()})
    return image_progress(ws, annotation_id)


def reopen(ws: Workspace, annotation_id: str) -> None:
    """Withdraw the confirmation of ``annotation_id`` (its mask stays)."""
    status_path(ws, annotation_id).unlink(missing_ok=True)


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime ns, size) of a file, None when absent: what says a cached reading of it is still current."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def image_progress(ws: Workspace, annotation_id: str) -> ImageProgress:
    """The :class:`ImageProgress` of one image (mask and status re-read only when their files change)."""
    paths = (ws.mask_path(annotation_id), status_path(ws, annotation_id), ws.image_path(annotation_id))
    stamp = (len(ws.classes), *map(file_stamp, paths))
    cached = _PROGRESS.get((str(ws.root), annotation_id))
    if cached and cached[0] == stamp:
        return cached[1]
    counts = np.zeros(len(ws.classes), np.int64)
    try:
        mask = ws.read_mask(annotation_id)
    except LabelgenError:  # an unreadable mask file counts as not labelled
        mask = None
    if mask is None:
        with Image.open(paths[2]) as im:
            pixels = im.width * im.height
        labelled = 0
    else:
        pixels = mask.size
        counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=len(counts))[:len(counts)]
        labelled = int(np.count_nonzero(mask != IGNORE_INDEX))
    confirmed = None
    if stamp[2] is not None:
        try:
            record = read_json(paths[1])
            confirmed = record.get("mask_sha256") if isinstance(record, dict) and record.get("status") == DONE else None
        except LabelgenError:
            confirmed = None
    done = confirmed is not None and mask is not None and labelled > 0 and confirmed == _mask_digest(mask)
    status = DONE if done else (PARTLY if labelled else UNLABELLED)
    progress = ImageProgress(annotation_id, status, labelled, pixels, counts, edited=confirmed is not None and not done)
    _PROGRESS[(str(ws.root), annotation_id)] = (stamp, progress)
    return progress


def annotation_progress(ws: Workspace) -> list[ImageProgress]:
    """:func:`image_progress` of every annotation image, in id order."""
    return [image_progress(ws, i) for i in ws.annotation_ids()]


# ---------------------------------------------------------------- overlays


def heat(values: np.ndarray) -> np.ndarray:
    """A [H, W] map in [0, 1] as an RGB heat image (black -> red -> yellow -> white)."""
    v = np.clip(np.nan_to_num(values.astype(np.float32)), 0, 1)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


# ---------------------------------------------------------------- review store
_REVIEW_LOCK = threading.Lock()


class ReviewStore:
    """Accept/reject decisions per synthetic set, in ``W/review.json`` (atomic writes).

    ``{"version": 1, "sets": {"synthetic": {"<key>": "accepted" | "rejected"}}}``; set names are paths
    relative to the workspace."""

    def __init__(self, ws: Workspace):
        self.path = ws.root / REVIEW_FILE

    def _read(self) -> dict:
        if not self.path.is_file():
            return {"version": 1, "sets": {}}
        try:
            data = read_json(self.path)
        except LabelgenError:
            return {"version": 1, "sets": {}}
        if not isinstance(data, dict) or not isinstance(data.get("sets"), dict):
            return {"version": 1, "sets": {}}
        return data

    def decisions(self, set_name: str) -> dict[str, str]:
        return dict(self._read()["sets"].get(set_name, {}))

    def set(self, set_name: str, key: str, decision: str | None) -> None:
        """Make ``key``'s state ``decision`` (None: unreviewed), whatever it was: the same call twice is the same
        as once. Written at once; one read-modify-write at a time in this process (the app's sessions)."""
        if decision not in (ACCEPTED, REJECTED, None):
            raise AppError(f"bad review decision {decision!r}")
        with _REVIEW_LOCK:
            data = self._read()
            entries = data["sets"].setdefault(set_name, {})
            if decision is None:
                entries.pop(key, None)
            else:
                entries[key] = decision
            data["updated"] = time.time()
            atomic_write_json(self.path, data)


# ---------------------------------------------------------------- synthetic sets
@dataclass
class SampleInfo:
    key: str
    shard: str  # file name of the tar
    index: int  # position inside the shard
    meta: dict

    @property
    def uncertainty(self) -> float | None:
        """The image score ``labelgen synthesize`` stored (meta ``uncertainty``: mean of the 10 % most
        uncertain pixels, measure in ``uncertainty_measure``), or None."""
        value = self.meta.get("uncertainty")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def synthetic_sets(ws: Workspace) -> list[str]:
    """Folders inside the workspace holding finished shards (relative names), ``synthetic`` first."""
    found = []
    for manifest in sorted(ws.root.rglob("manifest.json")):
        rel = manifest.parent.relative_to(ws.root).as_posix()
        if ".app" in rel.split("/"):
            continue
        found.append(rel)
    for folder in sorted({p.parent for p in ws.root.rglob("[0-9]" * 6 + ".tar")}):
        rel = folder.relative_to(ws.root).as_posix()
        if rel not in found:
            found.append(rel)
    found.sort(key=lambda r: (r != "synthetic", r))
    return found


def list_samples(set_dir: Path) -> list[SampleInfo]:
    """Every sample of a shard set with its metadata (images not decoded)."""
    from labelgen.data.shards import ShardReader, iter_shard

    reader = ShardReader(set_dir, decode=False)
    out = []
    for path, _count in reader.shards:
        for k, sample in enumerate(iter_shard(path, decode=False)):
            out.append(SampleInfo(sample.key, path.name, k, sample.meta))
    return out


def load_sample(set_dir: Path, info: SampleInfo):
    """The decoded :class:`ShardSample` of ``info``."""
    from labelgen.data.shards import iter_shard

    shard = resolve_inside(set_dir, info.shard)
    for k, sample in enumerate(iter_shard(shard)):
        if k == info.index:
            if sample.key != info.key:
                break
            return sample
    raise AppError(f"sample {info.key} not found in {info.shard} (was the set rewritten?)")


def fix_sample(ws: Workspace, sample) -> str:
    """Copy a synthetic sample (image + recipe + mask) into the annotations; returns the new id."""
    meta = sample.meta or {}
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict):
        recipe = {k: meta[k] for k in ("seed", "truncation", "latent", "noise_seed", "prompt") if k in meta}
    if not recipe:
        recipe = {"source": "real"}  # no way to recompute it: treat the pixels as a real image
    recipe = dict(recipe)
    recipe["from_synthetic"] = sample.key
    annotation_id = ws.add_annotation(np.ascontiguousarray(sample.image), recipe)
    mask = np.asarray(sample.mask, np.uint8).copy()
    mask[(mask >= len(ws.classes)) & (mask != IGNORE_INDEX)] = IGNORE_INDEX
    ws.save_mask(annotation_id, mask)
    return annotation_id

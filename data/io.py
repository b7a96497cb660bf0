"""Image/mask/JSON reading with one-line errors, and atomic writes (temp name, then rename)."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelgen.errors import DataError, one_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255  # mask value meaning "not labelled"; excluded from losses and metrics
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS  # larger images are refused (Pillow's "decompression bomb" bound)
TOO_LARGE = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# what decoding a bad image file raises (Pillow: its own types, OSError "truncated", SyntaxError, ValueError)
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, *TOO_LARGE)
# OSErrors that say the file system refused a read or write (full, read-only, no permission, a file where
# a folder should be, ...): bad input or environment, never a bug; one line naming the file
FS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG,
                       errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP})


def fs_error(path: Path | str, error: OSError, doing: str = "cannot write") -> DataError:
    """The one-line :class:`DataError` for a file-system refusal ``error`` (errno in :data:`FS_ERRNOS`)."""
    return DataError(f"{path}: {doing} ({error.strerror or error})")


@contextmanager
def fs_refusals(path: Path | str, doing: str = "cannot write") -> Iterator[None]:
    """Inside: an OSError that is a file-system refusal (:data:`FS_ERRNOS`) becomes :func:`fs_error`."""
    try:
        yield
    except OSError as e:
        if e.errno in FS_ERRNOS:
            raise fs_error(path, e, doing) from None
        raise


@contextmanager
def _bounded_image(path: Path | str | io.BytesIO) -> Iterator[Image.Image]:
    """``Image.open`` that refuses images over MAX_IMAGE_PIXELS (Pillow only warns up to twice that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(path)
    with im:
        yield im


def _image_error(path: Path, e: Exception, what: str) -> DataError:
    if isinstance(e, TOO_LARGE):
        return DataError(f"{path}: {what} too large (over {MAX_IMAGE_PIXELS} pixels; a decompression bomb?)")
    return DataError(f"{path}: unreadable or corrupt {what} ({type(e).__name__})")


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes (the content identity of an input file)."""
    digest = hashlib.sha256()
    try:
        with fs_refusals(path, "cannot read"), open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    return digest.hexdigest()


def pixels_sha256(image: np.ndarray) -> str:
    """Hex sha256 of a decoded image's shape and uint8 pixels (the content identity of an image, whatever file
    or shard holds it: stored teacher features are keyed by it)."""
    array = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def is_count(value: Any) -> bool:
    """Whether a value read from JSON is an integer >= 0 (not a bool, a float or a string of digits)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def repeated(values: Iterable[Any]) -> list[Any]:
    """The values that occur more than once, sorted (ids and keys that must be unique)."""
    return sorted(value for value, n in Counter(values).items() if n > 1)


def resolve_inside(root: Path | str, relative: Path | str) -> Path:
    """``root / relative`` resolved (symlinks followed), refused unless it lies inside ``root``: a path
    read from a dataset file (``../x``, ``/abs``, a symlink out) must not reach files outside the dataset."""
    base = Path(root).resolve()
    try:
        target = (base / relative).resolve()
    except (RuntimeError, ValueError, OSError) as e:  # a symlink loop, a NUL byte
        raise DataError(f"{relative}: not a usable path inside {base} ({one_line(e, 100)})") from None
    if not target.is_relative_to(base):
        raise DataError(f"{relative}: resolves to {target}, outside {base}; files are only read from inside it")
    return target


def check_split_name(split: str) -> str:
    """A split name becomes a folder inside the output (``OUT/<split>``): a plain name, never a path that
    could write (or clear a ``<split>.partial``) elsewhere. Returns it."""
    if (not split or split.startswith(".") or "/" in split or "\\" in split or not split.isprintable()
            or split.endswith(".partial") or len(split) > 100):
        raise DataError(f"--split {split!r}: a split is a plain folder name (no '/' or '\\', not starting with "
                        f"'.', not ending in .partial)")
    return split


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (masks named ``*.mask.png`` excluded)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.endswith(".mask.png")
    )


def read_image(path: Path) -> np.ndarray:
    """RGB image as uint8 [H, W, 3]."""
    try:
        with _bounded_image(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except IMAGE_ERRORS as e:
        raise _image_error(path, e, "image") from None


def read_mask_pixels(path: Path) -> np.ndarray:
    """Raw mask pixels: uint8 [H, W] for index ('L'/'P') PNGs, uint8 [H, W, 3] for colour masks."""
    try:
        with _bounded_image(path) as im:
            im.load()
            if im.mode in ("P", "L"):
                return np.asarray(im, dtype=np.uint8)
            if im.mode in ("I", "I;16"):
                arr = np.asarray(im)
                if arr.max(initial=0) > 255:
                    raise DataError(f"{path}: mask values above 255 are not supported")
                return arr.astype(np.uint8)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: mask not found") from None
    except IMAGE_ERRORS as e:
        raise _image_error(path, e, "mask") from None


def check_mask(mask: np.ndarray, image_shape: tuple[int, ...], num_classes: int, path: Path) -> np.ndarray:
    """Validate an index mask [H, W] against its image and the class count; returns it."""
    if mask.shape[:2] != tuple(image_shape[:2]):
        raise DataError(
            f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
            f"{image_shape[1]}x{image_shape[0]} (WxH)"
        )
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        raise DataError(
            f"{path}: class id {int(mask[bad].max())} out of range (classes 0..{num_classes - 1}, "
            f"{IGNORE_INDEX} = ignore)"
        )
    return mask


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask once (os.umask can only be read by setting it)


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """The project's one atomic-write mechanism: ``write(tmp)`` to a temp file beside ``path``, then
    rename over ``path`` (same folder, so readers see the old file or the new one, never half of one).
    A full, read-only or otherwise refusing file system is a one-line DataError naming ``path``."""
    path = Path(path)
    tmp = None
    try:
        with fs_refusals(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            write(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
            os.replace(tmp, path)
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def ensure_folder(path: Path | str) -> Path:
    """Create folder ``path`` (and its parents) if needed; a file in the way is a one-line DataError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: exists and is not a folder")
    with fs_refusals(path, "cannot create the folder"):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def staged_folder(out: Path | str) -> Iterator[Path]:
    """Write a set of files into folder ``out`` all or nothing: the body writes them into a hidden staging
    folder inside ``out`` (yielded); when it returns they are renamed into ``out``. When it fails the staging
    folder is removed, and so is ``out`` (with the parents) when it was created for this: ``out`` is left
    as it was. A file of the same name in ``out`` is replaced."""
    out = Path(out)
    created = [p for p in (out, *out.parents) if not p.exists()]
    ensure_folder(out)
    stage = out / f".staging.{os.getpid()}.tmp"
    try:
        with fs_refusals(out):
            stage.mkdir()
            yield stage
            for staged in sorted(stage.iterdir()):
                os.replace(staged, out / staged.name)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # innermost first; stops at the first that is not empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(stage, ignore_errors=True)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` atomically (fsync'd before the rename)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON ({e.msg if hasattr(e, 'msg') else e})") from None


def png_bytes(array: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> bytes:
    """Encode uint8 [H, W, 3] (RGB) or [H, W] (index; with ``palette``, a 'P' PNG) as PNG bytes."""
    assert array.dtype == np.uint8, array.dtype
    im = Image.fromarray(array)
    if array.ndim == 2 and palette is not None:
        im = im.convert("P")  # 'L' -> 'P' keeps the index values
        flat = [c for rgb in palette for c in rgb]
        flat += [0] * (768 - len(flat))
        if len(palette) < 256:  # show "ignore" (255) in white
            flat[765:768] = [255, 255, 255]
        im.putpalette(flat)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_png(path: Path, array: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> None:
    """Atomically write an RGB image or an index mask (palette PNG when ``palette`` given)."""
    atomic_write_bytes(Path(path), png_bytes(array, palette))


def decode_png(payload: bytes, mask: bool = False) -> np.ndarray:
    with _bounded_image(io.BytesIO(payload)) as im:
        if mask:
            return np.asarray(im if im.mode in ("P", "L") else im.convert("L"), dtype=np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_safetensors(path: Path | str, device: str = "cpu") -> dict:
    """The tensors of a safetensors file; a missing, empty, truncated or corrupt file is one DataError line."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: unreadable safetensors file ({one_line(e, 120)})") from None


def save_safetensors(path: Path, state, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a module's state dict (or a state dict) as safetensors (detached, on CPU)."""
    from safetensors.torch import save_file

    state = state.state_dict() if hasattr(state, "state_dict") else state
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except Exception as e:  # a full disk is a SafetensorError "... (os error 28)", not an OSError: make it one
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None or int(code.group(1)) not in FS_ERRNOS:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), tmp) from None

    atomic_write(path, write)  # an OSError of FS_ERRNOS there: one line naming ``path``

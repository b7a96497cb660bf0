"""Image/mask/JSON reading with one-line errors, and atomic writes (temp name, then rename)."""
from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from labelgen.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255  # mask value meaning "not labelled"; excluded from losses and metrics


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
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt image ({type(e).__name__})") from None


def read_mask_pixels(path: Path) -> np.ndarray:
    """Raw mask pixels: uint8 [H, W] for index ('L'/'P') PNGs, uint8 [H, W, 3] for colour masks."""
    try:
        with Image.open(path) as im:
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: unreadable or corrupt mask ({type(e).__name__})") from None


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
    rename over ``path`` (same folder, so readers see the old file or the new one, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    with Image.open(io.BytesIO(payload)) as im:
        if mask:
            return np.asarray(im if im.mode in ("P", "L") else im.convert("L"), dtype=np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def save_safetensors(path: Path, state, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a module's state dict (or a state dict) as safetensors (detached, on CPU)."""
    from safetensors.torch import save_file

    state = state.state_dict() if hasattr(state, "state_dict") else state
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

"""Clothing Co-Parsing (CCP): the published layout, the CCP-8 class map, the fixed splits, import.

Published layout (read as is, nothing converted)::

    photos/0001.jpg ... 2098.jpg                        RGB, 550x832 (WxH)
    annotations/pixel-level/0001.mat ... 1004.mat       variable `groundtruth`: uint8 [832, 550], 0..58
    annotations/image-level/1005.mat ... 2098.mat       variable `tags` (image-level only; unused)
    label_list.mat                                      variable `label_list`: 1x59 cell of names

The CCP-8 map, the split names and ranges follow the dataset's DATACARD.md (the project's reference
benchmark); they are data here, so every command uses the same ones.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelgen.data.classes import ClassList
from labelgen.data.folder import LabelledImage
from labelgen.data.io import read_image, write_png
from labelgen.errors import DataError

CCP8_CLASSES = ClassList(
    names=("background", "skin", "hair", "upper", "lower", "dress", "footwear", "accessories"),
    colours=((0, 0, 0), (255, 200, 160), (120, 60, 20), (220, 40, 40), (40, 80, 220), (200, 60, 200),
             (240, 200, 0), (0, 190, 170)),
)

# fine class name -> CCP-8 id (DATACARD.md table)
CCP8_OF_FINE: dict[str, int] = {"null": 0, "skin": 1, "hair": 2}
for _name in ("blazer blouse bodysuit bra cape cardigan coat hoodie intimate jacket jumper shirt suit sweater "
              "sweatshirt swimwear t-shirt top vest").split():
    CCP8_OF_FINE[_name] = 3
for _name in "jeans leggings pants panties shorts skirt stockings tights socks".split():
    CCP8_OF_FINE[_name] = 4
for _name in ("dress", "romper"):
    CCP8_OF_FINE[_name] = 5
for _name in "boots clogs flats heels loafers pumps sandals shoes sneakers wedges".split():
    CCP8_OF_FINE[_name] = 6
for _name in ("accessories bag belt bracelet earrings glasses gloves hat necklace purse ring scarf sunglasses "
              "tie wallet watch").split():
    CCP8_OF_FINE[_name] = 7


def _ids(first: int, last: int) -> tuple[int, ...]:
    return tuple(range(first, last + 1))


# split name -> photo ids; labelled splits have pixel-level masks
SPLITS: dict[str, tuple[int, ...]] = {
    "annotated-20": _ids(1, 20),
    "annotated-50": _ids(1, 50),
    "train-full": _ids(1, 404),
    "val": _ids(405, 504),
    "test": _ids(505, 1004),
    "unlabeled": _ids(1, 404) + _ids(1005, 2098),
}
LABELLED_SPLITS = ("annotated-20", "annotated-50", "train-full", "val", "test")
LAST_LABELLED_ID = 1004


def fine_to_ccp8_lut(label_list: list[str]) -> np.ndarray:
    """uint8 [256] lookup table: fine id (index into label_list) -> CCP-8 id; unknown ids -> error."""
    lut = np.full(256, 255, dtype=np.uint8)
    for fine_id, name in enumerate(label_list):
        if name not in CCP8_OF_FINE:
            raise DataError(f"label_list.mat: fine class {name!r} is not in the CCP-8 map")
        lut[fine_id] = CCP8_OF_FINE[name]
    return lut


def _loadmat(path: Path, variable: str):
    import scipy.io

    try:
        content = scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as e:  # scipy raises ValueError/TypeError/MatReadError on corrupt files
        raise DataError(f"{path}: unreadable .mat file ({type(e).__name__})") from None
    if variable not in content:
        raise DataError(f"{path}: no variable {variable!r} (has {sorted(k for k in content if not k.startswith('__'))})")
    return content[variable]


@dataclass
class CCPDataset:
    """The CCP published layout at ``root``; yields CCP-8 :class:`LabelledImage` at full resolution."""

    root: Path

    def __post_init__(self):
        self.root = Path(self.root)
        for sub in ("photos", "annotations/pixel-level"):
            if not (self.root / sub).is_dir():
                raise DataError(f"{self.root}: not the CCP layout (missing {sub}/)")
        cells = _loadmat(self.root / "label_list.mat", "label_list")
        self.label_list = [str(np.asarray(c).ravel()[0]) if np.asarray(c).size else "" for c in np.asarray(cells).ravel()]
        self.lut = fine_to_ccp8_lut(self.label_list)
        self.classes = CCP8_CLASSES

    def photo_path(self, photo_id: int) -> Path:
        return self.root / "photos" / f"{photo_id:04d}.jpg"

    def mask_path(self, photo_id: int) -> Path | None:
        return self.root / "annotations" / "pixel-level" / f"{photo_id:04d}.mat" if photo_id <= LAST_LABELLED_ID else None

    def read_fine_mask(self, photo_id: int) -> np.ndarray:
        path = self.mask_path(photo_id)
        if path is None:
            raise DataError(f"photo {photo_id:04d} has no pixel-level annotation")
        gt = np.asarray(_loadmat(path, "groundtruth"))
        if gt.ndim != 2:
            raise DataError(f"{path}: groundtruth has shape {gt.shape}, expected [H, W]")
        if not np.issubdtype(gt.dtype, np.integer):  # floats would be truncated, anything else is no class id
            raise DataError(f"{path}: groundtruth is {gt.dtype}, expected integer class ids")
        if gt.min(initial=0) < 0:
            raise DataError(f"{path}: negative class id {int(gt.min())} in groundtruth")
        if gt.max(initial=0) >= len(self.label_list):
            raise DataError(f"{path}: class id {int(gt.max())} out of range (0..{len(self.label_list) - 1})")
        return gt.astype(np.uint8)

    def read(self, photo_id: int, with_mask: bool = True) -> LabelledImage:
        image = read_image(self.photo_path(photo_id))
        mask = None
        if with_mask and self.mask_path(photo_id) is not None:
            mask = self.lut[self.read_fine_mask(photo_id)]
            if mask.shape != image.shape[:2]:
                raise DataError(f"{self.mask_path(photo_id)}: mask size {mask.shape[::-1]} differs from image "
                                f"size {image.shape[1::-1]} (WxH)")
        return LabelledImage(f"{photo_id:04d}", image, mask, self.photo_path(photo_id), self.mask_path(photo_id))

    def split(self, name: str) -> Iterator[LabelledImage]:
        if name not in SPLITS:
            raise DataError(f"unknown CCP split {name!r} (one of {', '.join(SPLITS)})")
        labelled = name in LABELLED_SPLITS
        for photo_id in SPLITS[name]:
            yield self.read(photo_id, with_mask=labelled)


def _convert_one(args) -> int:
    from labelgen.imaging import fit_photo

    root, photo_id, with_mask, size_hw, targets = args
    dataset = _worker_dataset(root)
    item = dataset.read(photo_id, with_mask=with_mask)
    image, mask = fit_photo(item.image, size_hw, item.mask)
    for split_dir in targets:
        write_png(Path(split_dir) / "images" / f"{photo_id:04d}.png", image)
        if mask is not None and Path(split_dir).name in LABELLED_SPLITS:
            write_png(Path(split_dir) / "masks" / f"{photo_id:04d}.png", mask, CCP8_CLASSES.palette)
    return photo_id


_DATASETS: dict[str, CCPDataset] = {}


def _worker_dataset(root: str) -> CCPDataset:
    if root not in _DATASETS:
        _DATASETS[root] = CCPDataset(Path(root))
    return _DATASETS[root]


def import_ccp(src: Path, out: Path, size_hw: tuple[int, int], splits: tuple[str, ...] = tuple(SPLITS),
               workers: int | None = None, progress=None, limit: int | None = None) -> dict:
    """Write a benchmark-ready copy of CCP in the project's folder format (see data/folder.py).

    Every photo is decoded and resized once, then written into each split folder that lists it.
    ``limit`` keeps only the first N photos of each split (quick trials, small fixtures).
    The copy is built under ``OUT.partial`` (locked: a second import into OUT meanwhile is refused) and renamed
    to ``OUT`` at the end, so ``OUT`` is either absent or complete. Returns a summary (photo count, seconds)."""
    from labelgen.imaging import size_problem

    src, out = Path(src), Path(out)
    problem = size_problem(size_hw)
    if problem:
        raise DataError(f"size {size_hw[0]}x{size_hw[1]}: {problem}")
    dataset = CCPDataset(src)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown CCP split {unknown[0]!r} (one of {', '.join(SPLITS)})")
    if out.exists():
        raise DataError(f"{out}: already exists; choose a new output folder")
    ids_of = {s: SPLITS[s][:limit] if limit else SPLITS[s] for s in splits}
    missing = [p for s in splits for p in [dataset.photo_path(i) for i in ids_of[s][:1] + ids_of[s][-1:]] if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: photo missing from the CCP layout")
    from labelgen.run import new_folder

    with new_folder(out, "labelgen data import-ccp") as partial:  # a bad photo or mask, a full disk: no OUT
        return _import_into(partial, src, dataset, splits, ids_of, size_hw, workers, progress)


def _import_into(partial: Path, src: Path, dataset: CCPDataset, splits: tuple[str, ...],
                 ids_of: dict[str, tuple[int, ...]], size_hw: tuple[int, int], workers: int | None, progress) -> dict:
    dataset.classes.save(partial / "classes.json")
    targets_of: dict[int, list[str]] = {}
    for s in splits:
        for photo_id in ids_of[s]:
            targets_of.setdefault(photo_id, []).append(str(partial / s))
    jobs = [(str(src), pid, any(Path(t).name in LABELLED_SPLITS for t in tg), size_hw, tuple(tg))
            for pid, tg in sorted(targets_of.items())]
    start = time.perf_counter()
    workers = workers or min(8, os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_convert_one, jobs, chunksize=16):
                if progress:
                    progress()
    else:
        for job in jobs:
            _convert_one(job)
            if progress:
                progress()
    return {"photos": len(jobs), "splits": list(splits), "size_hw": list(size_hw), "seconds": time.perf_counter() - start}

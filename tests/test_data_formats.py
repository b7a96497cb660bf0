"""Readers of the formats users have: project folder, flat annotation folder, VOC/CVAT, CCP."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelgen.data.ccp import CCP8_CLASSES, CCPDataset, SPLITS, import_ccp
from labelgen.data.classes import ClassList, find_classes_file, read_classes_file
from labelgen.data.folder import LabelledFolder, VocFolder, open_labelled
from labelgen.data.io import write_png
from labelgen.errors import DataError

CLASSES = ClassList(("bg", "cat", "dog"), ((0, 0, 0), (255, 0, 0), (0, 255, 0)))


def make_project_folder(root: Path, n: int = 3, size=(12, 16), masks=True) -> Path:
    rng = np.random.default_rng(1)
    CLASSES.save(root / "classes.json")
    for i in range(n):
        write_png(root / "train" / "images" / f"{i:04d}.png", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        if masks:
            m = rng.integers(0, 3, size, dtype=np.uint8)
            m[0, 0] = 255
            write_png(root / "train" / "masks" / f"{i:04d}.png", m, CLASSES.palette)
    return root / "train"


def test_project_folder_reads_images_masks_and_classes_from_parent(tmp_path):
    split = make_project_folder(tmp_path)
    ds = open_labelled(split, require_masks=True)
    assert len(ds) == 3 and ds.classes == CLASSES
    item = ds[1]
    assert item.key == "0001" and item.image.shape == (12, 16, 3) and item.mask.shape == (12, 16)
    assert set(np.unique(item.mask)) <= {0, 1, 2, 255}


def test_split_argument_and_flat_annotation_folder(tmp_path):
    make_project_folder(tmp_path)
    assert len(open_labelled(tmp_path, split="train")) == 3
    flat = tmp_path / "flat"
    CLASSES.save(flat / "classes.json")
    write_png(flat / "a.png", np.zeros((4, 5, 3), np.uint8))
    write_png(flat / "a.mask.png", np.ones((4, 5), np.uint8), CLASSES.palette)
    write_png(flat / "b.png", np.zeros((4, 5, 3), np.uint8))  # not annotated yet
    ds = LabelledFolder(flat)
    assert len(ds) == 2 and ds.labelled_count == 1
    assert ds[0].mask.tolist() == np.ones((4, 5), np.uint8).tolist() and ds[1].mask is None


def test_colour_masks_map_through_class_colours(tmp_path):
    CLASSES.save(tmp_path / "classes.json")
    write_png(tmp_path / "images" / "x.png", np.zeros((2, 3, 3), np.uint8))
    colour = np.zeros((2, 3, 3), np.uint8)
    colour[0, :] = (255, 0, 0)
    colour[1, 2] = (0, 255, 0)
    write_png(tmp_path / "masks" / "x.png", colour)
    assert LabelledFolder(tmp_path)[0].mask.tolist() == [[1, 1, 1], [0, 0, 2]]
    colour[1, 1] = (1, 2, 3)
    write_png(tmp_path / "masks" / "x.png", colour)
    with pytest.raises(DataError, match=r"colour \(1, 2, 3\) is not a class colour"):
        LabelledFolder(tmp_path)[0]


def test_classes_file_formats(tmp_path):
    (tmp_path / "classes.txt").write_text("background 0 0 0\nperson #ff0000\nsky\n")
    cl = read_classes_file(tmp_path / "classes.txt")
    assert cl.names == ("background", "person", "sky") and cl.colours[1] == (255, 0, 0)
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:10,20,30::\n")
    lm = read_classes_file(tmp_path / "labelmap.txt")
    assert lm.names == ("background", "car") and lm.colours[1] == (10, 20, 30)
    assert find_classes_file(tmp_path).name == "labelmap.txt"  # labelmap preferred over classes.txt


def test_voc_palette_export_with_split(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("img_b\n")
    (tmp_path / "labelmap.txt").write_text("background:0,0,0::\ncar:128,0,0::\nperson:0,128,0::\n")
    for stem in ("img_a", "img_b"):
        (tmp_path / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (6, 7, 3), dtype=np.uint8)).save(tmp_path / "JPEGImages" / f"{stem}.jpg")
        m = np.zeros((6, 7), np.uint8)
        m[2:4, 2:5] = 2
        m[0, :] = 255  # VOC void border
        write_png(tmp_path / "SegmentationClass" / f"{stem}.png", m, [(0, 0, 0), (128, 0, 0), (0, 128, 0)])
    ds = open_labelled(tmp_path)
    assert isinstance(ds, VocFolder) and len(ds) == 2 and ds.classes.names == ("background", "car", "person")
    assert int((ds[0].mask == 2).sum()) == 6 and int((ds[0].mask == 255).sum()) == 7
    val = VocFolder(tmp_path, split="val")
    assert [p.stem for p in val.image_paths] == ["img_b"]


def test_ccp_published_layout_reads_real_mat_files(ccp_mini):
    ds = CCPDataset(ccp_mini)
    assert len(ds.label_list) == 59 and ds.label_list[0] == "null"
    item = ds.read(1)
    assert item.image.shape == (83, 55, 3) and item.mask.shape == (83, 55)
    assert set(np.unique(item.mask)) <= set(range(8))
    fine = ds.read_fine_mask(1)
    # the map agrees with the datacard: skin -> 1, hair -> 2, null -> 0
    for fine_name, coarse in (("skin", 1), ("hair", 2), ("null", 0)):
        fid = ds.label_list.index(fine_name)
        if (fine == fid).any():
            assert (item.mask[fine == fid] == coarse).all()
    assert ds.read(1005).mask is None  # image-level only


def test_ccp_splits_are_the_datacard_ranges():
    assert SPLITS["annotated-20"] == tuple(range(1, 21))
    assert len(SPLITS["unlabeled"]) == 1498 and SPLITS["unlabeled"][404] == 1005
    assert SPLITS["val"][0] == 405 and SPLITS["test"][-1] == 1004 and len(SPLITS["test"]) == 500


def test_import_ccp_writes_project_format(ccp_mini, tmp_path):
    out = tmp_path / "ccp"
    summary = import_ccp(ccp_mini, out, (24, 16), limit=2, workers=1)
    assert summary["photos"] == 6
    assert sorted(p.name for p in out.iterdir()) == sorted(["classes.json", *SPLITS])
    val = open_labelled(out / "val", require_masks=True)
    assert [p.name for p in val.image_paths] == ["0405.png", "0406.png"]
    item = val[0]
    assert item.image.shape == (24, 16, 3) and item.mask.shape == (24, 16) and val.classes == CCP8_CLASSES
    assert not (out / "unlabeled" / "masks").exists()  # unlabelled split: images only
    assert not out.with_name("ccp.partial").exists()
    with pytest.raises(DataError, match="already exists"):
        import_ccp(ccp_mini, out, (24, 16), limit=2, workers=1)


def test_import_ccp_missing_photo_leaves_nothing(ccp_mini, tmp_path):
    with pytest.raises(DataError, match=r"0003\.jpg: photo missing"):
        import_ccp(ccp_mini, tmp_path / "x", (24, 16), splits=("annotated-20",), limit=3, workers=1)
    assert not (tmp_path / "x").exists()


# ---- bad input: one clear error naming the file ----

def test_bad_inputs_name_the_file(tmp_path):
    split = make_project_folder(tmp_path)
    (split / "images" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"0000\.png: unreadable or corrupt image"):
        open_labelled(split)[0]
    write_png(split / "masks" / "0001.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match=r"0001\.png: mask size 5x5 differs from image size 16x12"):
        open_labelled(split)[1]
    write_png(split / "masks" / "0002.png", np.full((12, 16), 7, np.uint8))
    with pytest.raises(DataError, match=r"0002\.png: class id 7 out of range"):
        open_labelled(split)[2]


def test_missing_classes_file_and_empty_folder(tmp_path):
    (tmp_path / "a" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="missing classes file"):
        open_labelled(tmp_path / "a")
    CLASSES.save(tmp_path / "a" / "classes.json")
    with pytest.raises(DataError, match="empty folder"):
        open_labelled(tmp_path / "a")


def test_corrupt_mat_file_is_named(ccp_mini, tmp_path):
    import shutil

    root = tmp_path / "ccp"
    shutil.copytree(ccp_mini, root)
    (root / "annotations" / "pixel-level" / "0002.mat").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"0002\.mat: unreadable \.mat file"):
        CCPDataset(root).read(2)


def test_atomic_writes_have_ordinary_permissions(tmp_path):
    import os

    from labelgen.data.io import atomic_write_json

    atomic_write_json(tmp_path / "x.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not list(tmp_path.glob(".*.tmp"))

"""`labelgen data import` / `data export`: COCO (polygons, RLE), Cityscapes, Label Studio (brush RLE,
polygons), VOC split lists, 0/255 binary masks, round trips, bad input. Fixtures are made in code."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelgen.cli import main
from labelgen.data.classes import ClassList
from labelgen.data.coco import rle_counts_from_string
from labelgen.data.folder import open_labelled
from labelgen.data.formats import detect_format, import_dataset
from labelgen.data.io import write_png
from labelgen.data.labelstudio import decode_brush_rle, encode_brush_rle
from labelgen.data.mapping import ClassMapping
from labelgen.errors import DataError

H, W = 24, 32


def _image(seed: int, hw=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*hw, 3), dtype=np.uint8)


def _runs(region: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a bool [H, W], computed directly: column-major runs, zeros first."""
    flat = region.T.ravel().astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.r_[0, change, flat.size]
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def _compressed(region: np.ndarray) -> str:
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))["counts"].decode()


def _cli(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- COCO
def make_coco(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """Two images; categories with non-contiguous ids; a polygon (cat, large), an uncompressed RLE (dog,
    small, overlapping the cat) and a compressed RLE (cat). Returns (json path, expected masks)."""
    (root / "images").mkdir(parents=True)
    for i in (1, 2):
        Image.fromarray(_image(i)).save(root / "images" / f"im{i}.png")
    dog = np.zeros((H, W), bool)
    dog[6:10, 8:12] = True
    blob = np.zeros((H, W), bool)
    blob[15:20, 3:25] = True
    blob[17, 10] = False
    data = {
        "images": [{"id": 1, "file_name": "im1.png", "width": W, "height": H},
                   {"id": 2, "file_name": "im2.png", "width": W, "height": H}],
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 7, "segmentation": {"size": [H, W], "counts": _runs(dog)}},
            {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0,
             "segmentation": [[2.0, 2.0, 20.0, 2.0, 20.0, 14.0, 2.0, 14.0]]},
            {"id": 12, "image_id": 2, "category_id": 3, "segmentation": {"size": [H, W], "counts": _compressed(blob)}},
        ],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(data))
    return path, {"dog": dog, "blob": blob}


def test_coco_compressed_rle_strings_decode_to_their_runs():
    rng = np.random.default_rng(0)
    for _ in range(5):
        region = rng.random((H, W)) > rng.uniform(0.2, 0.8)
        assert rle_counts_from_string(_compressed(region), "t") == _runs(region)


def test_coco_polygons_and_rle_become_semantic_masks(tmp_path):
    path, shapes = make_coco(tmp_path / "coco")
    assert detect_format(tmp_path / "coco") == "coco"
    summary = import_dataset(tmp_path / "coco", tmp_path / "out", "coco")
    assert summary["images"] == 2 and summary["classes"] == ["background", "cat", "dog"]  # category id order
    ds = open_labelled(tmp_path / "out" / "train", require_masks=True)
    m1, m2 = ds[0].mask, ds[1].mask
    # the smaller dog lies on the larger cat polygon and keeps its pixels although listed first
    assert (m1[shapes["dog"]] == 2).all()
    assert m1[12, 16] == 1 and m1[3, 3] == 1 and m1[20, 25] == 0 and m1[0, 0] == 0
    assert int((m1 == 1).sum()) > 150  # ~18x12 polygon minus the dog
    assert np.array_equal(m2 == 1, shapes["blob"]) and set(np.unique(m2)) == {0, 1}
    assert np.array_equal(ds[0].image, _image(1))


def test_coco_unlabelled_ignore_and_class_mapping(tmp_path):
    make_coco(tmp_path / "coco")
    import_dataset(tmp_path / "coco", tmp_path / "out", "coco", unlabelled="ignore",
                   mapping=ClassMapping.parse("cat=animal,dog=animal"))
    ds = open_labelled(tmp_path / "out" / "train")
    assert ds.classes.names == ("animal",)
    assert set(np.unique(ds[1].mask)) == {0, 255}
    with pytest.raises(DataError, match="'dog' of .* is not mapped"):
        import_dataset(tmp_path / "coco", tmp_path / "o2", "coco", mapping=ClassMapping.parse("cat,background"))
    with pytest.raises(DataError, match="'cow' is not a class"):
        import_dataset(tmp_path / "coco", tmp_path / "o3", "coco", mapping=ClassMapping.parse("cow=x,*=ignore"))


@pytest.mark.parametrize("case, edit, message", [
    ("unknown category", lambda d: d["annotations"][0].update(category_id=99), "annotation 10: unknown category id 99"),
    ("missing image", lambda d: d["images"][1].update(file_name="gone.png"), "image 'gone.png' not found"),
    ("polygon outside", lambda d: d["annotations"][1].update(segmentation=[[2, 2, 60, 2, 60, 14]]),
     "annotation 11: polygon outside the image"),
    ("RLE size field", lambda d: d["annotations"][0]["segmentation"].update(size=[H, W + 1]),
     "annotation 10: RLE of the wrong size"),
    ("RLE runs", lambda d: d["annotations"][0]["segmentation"].update(counts=[5, 7, 9]),
     "annotation 10: RLE of the wrong size"),
    ("image size", lambda d: d["images"][0].update(width=W + 2), "im1.png: image is 32x24"),
])
def test_coco_bad_input_is_one_line_naming_the_annotation(tmp_path, capsys, case, edit, message):
    path, _ = make_coco(tmp_path / "coco")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    code, _, err = _cli(["data", "import", str(tmp_path / "coco"), "--format", "coco", "--out", str(tmp_path / "o")],
                        capsys)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o" / "train").exists() and not (tmp_path / "o" / "train.partial").exists()


def _official_layout(data: dict, copies: int) -> dict:
    """``data`` laid out as the official instances_*.json: info, licenses, images, annotations (each one
    ``copies`` times, so the same masks in a long file) and the categories last."""
    annotations = [dict(a, id=a["id"] * 100_000 + k) for k in range(copies) for a in data["annotations"]]
    return {"info": {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0"},
            "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1, "name": "by-nc-sa"}],
            "images": data["images"], "annotations": annotations, "categories": data["categories"]}


@pytest.mark.parametrize("indent", [None, 2])
def test_coco_recognised_with_its_categories_last(tmp_path, indent):
    path, shapes = make_coco(tmp_path / "coco")
    path.write_text(json.dumps(_official_layout(json.loads(path.read_text()), 400), indent=indent))
    assert path.read_text().index('"categories"') > 100_000
    assert detect_format(path) == detect_format(tmp_path / "coco") == "coco"
    summary = import_dataset(path, tmp_path / "out")  # --format auto
    assert summary["format"] == "coco" and summary["images"] == 2
    ds = open_labelled(tmp_path / "out" / "train")
    assert (ds[0].mask[shapes["dog"]] == 2).all() and np.array_equal(ds[1].mask == 1, shapes["blob"])


def test_own_coco_export_is_recognised(tmp_path):
    from labelgen.data.export import export_dataset

    rng = np.random.default_rng(0)
    ClassList.from_names(["background", "a", "b", "c"]).save(tmp_path / "src" / "classes.json")
    for i in range(60):
        write_png(tmp_path / "src" / "images" / f"{i}.png", _image(i))
        write_png(tmp_path / "src" / "masks" / f"{i}.png", rng.integers(0, 4, (H, W), dtype=np.uint8))
    export_dataset(tmp_path / "src", tmp_path / "exp", "coco")
    assert (tmp_path / "exp" / "annotations.json").read_text().index('"categories"') > 100_000
    assert detect_format(tmp_path / "exp") == "coco"
    assert import_dataset(tmp_path / "exp", tmp_path / "again")["images"] == 60


def test_coco_detection_reads_a_large_file_in_little_memory(tmp_path):
    import tracemalloc

    from labelgen.data.coco import looks_like_coco

    path, _ = make_coco(tmp_path / "coco")
    data = json.loads(path.read_text())
    data["annotations"][1]["segmentation"] = [[float(v % 20) for v in range(2000)]]  # a long polygon
    path.write_text(json.dumps(_official_layout(data, 1800)))
    size = path.stat().st_size
    assert size > 20_000_000
    tracemalloc.start()
    try:
        assert looks_like_coco(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 8, (peak, size)


# ---------------------------------------------------------------- Cityscapes
def make_cityscapes(root: Path) -> np.ndarray:
    ids = np.zeros((H, W), np.uint8)  # 0 = unlabeled
    ids[:8] = 23   # sky -> 10
    ids[8:16] = 7  # road -> 0
    ids[16:, :10] = 26  # car -> 13
    ids[16:, 10:20] = 33  # bicycle -> 18
    ids[16:, 20:] = 9  # parking -> ignore
    for split in ("train", "val"):
        Image.fromarray(_image(3)).save(_mk(root / "leftImg8bit" / split / "aachen") / "aachen_000000_000019_leftImg8bit.png")
        gt = _mk(root / "gtFine" / split / "aachen")
        Image.fromarray(ids).save(gt / "aachen_000000_000019_gtFine_labelIds.png")
        Image.fromarray(_image(4)).save(gt / "aachen_000000_000019_gtFine_color.png")  # not used
    return ids


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path, capsys):
    make_cityscapes(tmp_path / "cs")
    code, out, err = _cli(["data", "import", str(tmp_path / "cs"), "--out", str(tmp_path / "out"), "--split", "val"], capsys)
    assert code == 0, err
    assert "imported 1 images (cityscapes)" in out
    ds = open_labelled(tmp_path / "out" / "val", require_masks=True)
    assert len(ds.classes) == 19 and ds.classes.names[13] == "car" and ds.classes.colours[0] == (128, 64, 128)
    m = ds[0].mask
    assert ds[0].key == "aachen_000000_000019"
    assert (m[:8] == 10).all() and (m[8:16] == 0).all() and (m[16:, :10] == 13).all()
    assert (m[16:, 10:20] == 18).all() and (m[16:, 20:] == 255).all()
    # a second split into the same project folder, resized (masks nearest)
    code, out, err = _cli(["data", "import", str(tmp_path / "cs"), "--out", str(tmp_path / "out"), "--size", "12x16"],
                          capsys)
    assert code == 0, err
    small = open_labelled(tmp_path / "out" / "train")[0]
    assert small.image.shape == (12, 16, 3) and small.mask.shape == (12, 16) and set(np.unique(small.mask)) == {0, 10, 13, 18, 255}
    code, _, err = _cli(["data", "import", str(tmp_path / "cs"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "train: already exists" in err


def test_cityscapes_bad_ids_and_missing_image(tmp_path):
    make_cityscapes(tmp_path / "cs")
    label = tmp_path / "cs" / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((H, W), 40, np.uint8)).save(label)
    with pytest.raises(DataError, match="label id 40 is not a Cityscapes label"):
        import_dataset(tmp_path / "cs", tmp_path / "out", "cityscapes")
    (tmp_path / "cs" / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png").unlink()
    with pytest.raises(DataError, match="its image .* is missing"):
        import_dataset(tmp_path / "cs", tmp_path / "out", "cityscapes", split="val")
    with pytest.raises(DataError, match="split not found \\(has: train, val\\)"):
        import_dataset(tmp_path / "cs", tmp_path / "out", "cityscapes", split="test")


# ---------------------------------------------------------------- Label Studio
def test_brush_rle_literal_runs_and_round_trip():
    # hand-built: 2x1 image = 8 RGBA values; a literal run of 4 values (0, 0, 0, 255) then a repeated run of 4 x 0
    bits = f"{8:032b}" + f"{7:05b}" + "".join(f"{w - 1:04b}" for w in (3, 4, 8, 16))
    bits += "0" + "00" + f"{3:03b}" + "".join(f"{v:08b}" for v in (0, 0, 0, 255))
    bits += "1" + "00" + f"{3:03b}" + f"{0:08b}"
    bits += "0" * (-len(bits) % 8)
    rle = [int(bits[k:k + 8], 2) for k in range(0, len(bits), 8)]
    assert decode_brush_rle(rle, (1, 2), "t").tolist() == [[True, False]]
    region = np.random.default_rng(1).random((H, W)) > 0.7
    assert np.array_equal(decode_brush_rle(encode_brush_rle(region), (H, W), "t"), region)
    with pytest.raises(DataError, match="brush RLE of the wrong size"):
        decode_brush_rle(encode_brush_rle(region), (H, W + 1), "t")


def make_labelstudio(root: Path) -> tuple[Path, np.ndarray]:
    root.mkdir(parents=True)
    Image.fromarray(_image(5)).save(root / "photo.png")
    Image.fromarray(_image(6)).save(root / "other.png")
    brush = np.zeros((H, W), bool)
    brush[2:6, 2:30] = True
    brush[4, 10] = False
    size = {"original_width": W, "original_height": H}
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/1a2b3c4d-photo.png"}, "annotations": [
            {"id": 5, "was_cancelled": True, "result": []},
            {"id": 6, "result": [
                {"id": "b", "type": "brushlabels", **size,
                 "value": {"format": "rle", "rle": encode_brush_rle(brush), "brushlabels": ["sky"]}},
                {"id": "p", "type": "polygonlabels", **size,
                 "value": {"points": [[25, 50], [75, 50], [75, 100], [25, 100]], "polygonlabels": ["car"]}},
                {"id": "r", "type": "rectanglelabels", **size,
                 "value": {"x": 0, "y": 0, "width": 10, "height": 10, "rectanglelabels": ["car"]}},
            ]}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=pics/other.png"}, "annotations": []},
    ]
    path = root / "export.json"
    path.write_text(json.dumps(tasks))
    return path, brush


def test_labelstudio_brush_and_polygon_results(tmp_path, capsys):
    _, brush = make_labelstudio(tmp_path / "ls")
    assert detect_format(tmp_path / "ls") == "labelstudio"
    code, out, err = _cli(["data", "import", str(tmp_path / "ls"), "--out", str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert "imported 1 images (labelstudio, 1 skipped tasks, 1 skipped results)" in out
    ds = open_labelled(tmp_path / "out" / "train", require_masks=True)
    assert ds.classes.names == ("background", "car", "sky") and ds[0].key == "photo"
    m = ds[0].mask
    assert np.array_equal(m == 2, brush)
    assert (m[14:22, 10:22] == 1).all() and m[6:10].max() == 0 and m[20, 2] == 0  # polygon: x 8..24, y 12..24


def test_labelstudio_bad_input(tmp_path):
    path, _ = make_labelstudio(tmp_path / "ls")
    tasks = json.loads(path.read_text())
    tasks[0]["annotations"][1]["result"][0]["original_width"] = W * 2
    path.write_text(json.dumps(tasks))
    with pytest.raises(DataError, match="made on a 64x24 image"):
        import_dataset(path, tmp_path / "out", "labelstudio")
    tasks[0]["annotations"][1]["result"][0]["original_width"] = W
    tasks[0]["annotations"][1]["result"][1]["value"]["points"][1] = [140, 50]
    path.write_text(json.dumps(tasks))
    with pytest.raises(DataError, match="result p: polygon outside the image"):
        import_dataset(path, tmp_path / "out", "labelstudio")
    (tmp_path / "ls" / "photo.png").unlink()
    with pytest.raises(DataError, match="image 'photo.png' not found") as missing:
        import_dataset(path, tmp_path / "out", "labelstudio")
    assert "export.json/" not in str(missing.value)  # no search path inside the JSON file's name


def test_images_elsewhere_for_coco_and_labelstudio(tmp_path, capsys):
    """--images DIR: COCO file_name, Label Studio upload URLs (by file name) and local-files ?d= paths (relative
    to DIR, Label Studio's LOCAL_FILES_DOCUMENT_ROOT) resolve inside it."""
    make_coco(tmp_path / "coco")
    (tmp_path / "coco" / "images").rename(tmp_path / "pics")
    base = ["data", "import", str(tmp_path / "coco" / "annotations.json"), "--out"]
    code, _, err = _cli([*base, str(tmp_path / "o1")], capsys)
    assert code == 2 and "image 'im1.png' not found" in err and "--images" in err and err.count("\n") == 1
    code, out, err = _cli([*base, str(tmp_path / "o1"), "--images", str(tmp_path / "pics")], capsys)
    assert code == 0 and "imported 2 images (coco)" in out, err
    assert np.array_equal(open_labelled(tmp_path / "o1" / "train")[1].image, _image(2))

    path, brush = make_labelstudio(tmp_path / "ls")
    media = _mk(tmp_path / "media")
    (tmp_path / "ls" / "photo.png").rename(media / "1a2b3c4d-photo.png")  # where Label Studio keeps an upload
    tasks = json.loads(path.read_text())
    tasks[1] = {**tasks[0], "id": 2, "data": {"image": "/data/local-files/?d=set1/sub%20dir/other.png"}}
    path.write_text(json.dumps(tasks))
    Image.fromarray(_image(6)).save(_mk(media / "set1" / "sub dir") / "other.png")
    Image.fromarray(_image(9)).save(media / "other.png")  # the same file name elsewhere: the ?d= path wins
    code, out, err = _cli(["data", "import", str(path), "--out", str(tmp_path / "o2"), "--images", str(media)], capsys)
    assert code == 0 and "imported 2 images (labelstudio" in out, err
    ds = open_labelled(tmp_path / "o2" / "train")
    assert [it.key for it in ds] == ["1a2b3c4d-photo", "other"]
    assert np.array_equal(ds[0].image, _image(5)) and np.array_equal(ds[1].image, _image(6))
    assert np.array_equal(ds[0].mask == 2, brush)
    make_voc(tmp_path / "voc")  # formats whose images are part of their layout refuse it
    code, _, err = _cli(["data", "import", str(tmp_path / "voc"), "--out", str(tmp_path / "o3"), "--images",
                         str(media)], capsys)
    assert code == 2 and "--images" in err and "only coco, labelstudio imports" in err and err.count("\n") == 1


# ---------------------------------------------------------------- VOC split lists, unknown layouts
def make_voc(root: Path) -> None:
    seg = root / "ImageSets" / "Segmentation"
    seg.mkdir(parents=True)
    (seg / "train.txt").write_text("a\nc\n")
    (seg / "val.txt").write_text("b\n")
    (root / "labelmap.txt").write_text("background:0,0,0::\ncar:128,0,0::\n")
    for k, stem in enumerate("abc"):
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.fromarray(_image(k)).save(root / "JPEGImages" / f"{stem}.jpg")
        m = np.zeros((H, W), np.uint8)
        m[k:k + 5] = 1
        write_png(root / "SegmentationClass" / f"{stem}.png", m, [(0, 0, 0), (128, 0, 0)])


def test_voc_split_lists_are_honoured(tmp_path):
    make_voc(tmp_path / "voc")
    import_dataset(tmp_path / "voc", tmp_path / "out", "voc", split="val")
    assert [p.stem for p in open_labelled(tmp_path / "out" / "val").image_paths] == ["b"]
    # the student (and every reader) takes a split list as --data
    ds = open_labelled(tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt", require_masks=True)
    assert [p.stem for p in ds.image_paths] == ["a", "c"]


def test_voc_lists_with_extensions_crlf_and_png_images(tmp_path):
    make_voc(tmp_path / "voc")
    jpeg = tmp_path / "voc" / "JPEGImages"
    Image.open(jpeg / "c.jpg").save(jpeg / "c.png")  # a PNG in JPEGImages
    (jpeg / "c.jpg").unlink()
    seg = tmp_path / "voc" / "ImageSets" / "Segmentation"
    (seg / "train.txt").write_bytes(b"\xef\xbb\xbfa.jpg\r\nc.png\r\n\r\n")  # written on Windows: BOM, CRLF
    (seg / "val.txt").write_bytes(b"c\r\nb\r\n")
    import_dataset(tmp_path / "voc", tmp_path / "out", "voc", split="train")
    train = open_labelled(tmp_path / "out" / "train")
    assert [p.stem for p in train.image_paths] == ["a", "c"]
    assert np.array_equal(train[1].image, np.asarray(Image.open(jpeg / "c.png"))) and int((train[1].mask == 1).sum()) == 5 * W
    val = open_labelled(seg / "val.txt", require_masks=True)
    assert [p.name for p in val.image_paths] == ["c.png", "b.jpg"]
    (seg / "test.txt").write_bytes(b"a\r\nd.png\r\n")
    with pytest.raises(DataError, match=r"test.txt:2: image 'd.png' not in .*JPEGImages"):
        open_labelled(seg / "test.txt")


def _labelme_mask() -> np.ndarray:
    """labelme's label ids for one image: 0 _background_, 1 cat, 2 dog, -1 __ignore__ (lblsave writes it as 255)."""
    lbl = np.zeros((H, W), np.int32)
    lbl[2:10, 3:12] = 1
    lbl[12:20, 15:30] = 2
    lbl[20:, :4] = -1
    return lbl


@pytest.mark.parametrize("layout", ["SegmentationClass", "SegmentationClassPNG"])  # labelme2voc.py, new and old
def test_labelme_voc_output_reads_its_class_names(tmp_path, capsys, layout):
    root = tmp_path / "labelme_voc"
    _mk(root / "JPEGImages")
    Image.fromarray(_image(1)).save(root / "JPEGImages" / "x.jpg")
    lbl = _labelme_mask()
    im = Image.fromarray(lbl.astype(np.uint8), mode="P")  # as labelme.utils.lblsave: -1 -> 255, VOC palette
    im.putpalette([c for i in range(256) for c in ((0, 0, 0) if i == 0 else (i, 255 - i, 0))])
    im.save(_mk(root / layout) / "x.png")
    if layout == "SegmentationClassPNG":  # the older script: label arrays as .npy in SegmentationClass/
        np.save(_mk(root / "SegmentationClass") / "x.npy", lbl)
    (root / "class_names.txt").write_text("_background_\ncat\ndog")  # no newline at the end, as labelme writes it
    summary = import_dataset(root, tmp_path / "out")  # --format auto
    assert summary["format"] == "voc" and summary["classes"] == ["background", "cat", "dog"]
    mask = open_labelled(tmp_path / "out" / "train")[0].mask
    assert np.array_equal(mask, np.where(lbl < 0, 255, lbl))
    assert "assuming the 21 VOC classes" not in capsys.readouterr().err
    (root / "class_names.txt").unlink()  # without a classes file: VOC's 21, said in one line
    assert open_labelled(root).classes.names[:3] == ("background", "aeroplane", "bicycle")
    assert capsys.readouterr().err == f"warning: {root}: no labelmap.txt or class_names.txt: assuming the 21 VOC classes\n"


def test_labelme_coco_output_has_one_background(tmp_path):
    """labelme2coco.py: categories from labels.txt, _background_ (id 0) among them; an __ignore__ category
    (other converters keep it) paints 255."""
    root = tmp_path / "labelme_coco"
    Image.fromarray(_image(2)).save(_mk(root / "JPEGImages") / "x.jpg", quality=95)
    lbl = _labelme_mask()
    data = {"info": {"description": None}, "licenses": [{"url": None, "id": 0, "name": None}], "type": "instances",
            "images": [{"license": 0, "url": None, "file_name": "JPEGImages/x.jpg", "height": H, "width": W,
                        "date_captured": None, "id": 0}],
            "categories": [{"supercategory": None, "id": i, "name": n}
                           for i, n in enumerate(["_background_", "cat", "dog", "__ignore__"])],
            "annotations": [{"id": k, "image_id": 0, "category_id": c, "segmentation": {"size": [H, W],
                             "counts": _runs(lbl == (-1 if c == 3 else c))}, "area": 1.0, "bbox": [0, 0, 1, 1],
                             "iscrowd": 0} for k, c in enumerate([1, 2, 3])]}
    (root / "annotations.json").write_text(json.dumps(data))
    summary = import_dataset(root, tmp_path / "out")
    assert summary["format"] == "coco" and summary["classes"] == ["background", "cat", "dog"]
    assert np.array_equal(open_labelled(tmp_path / "out" / "train")[0].mask, np.where(lbl < 0, 255, lbl))


def test_unknown_and_foreign_layouts_are_named(tmp_path, capsys):
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    code, _, err = _cli(["data", "import", str(tmp_path / "x"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "unknown dataset layout (known: coco:" in err and "cityscapes:" in err and "labelstudio" in err
    make_coco(tmp_path / "coco")
    code, _, err = _cli(["data", "info", str(tmp_path / "coco")], capsys)
    assert code == 2 and "a coco dataset; convert it first with `labelgen data import --format coco" in err


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["coco", "voc", "folder"])
def test_import_export_import_gives_identical_masks(tmp_path, capsys, fmt):
    make_coco(tmp_path / "coco")
    first = tmp_path / "first"
    import_dataset(tmp_path / "coco", first, "coco", unlabelled="ignore")  # keeps 255 where nothing is annotated
    code, out, err = _cli(["data", "export", str(first / "train"), str(tmp_path / "exp"), "--format", fmt], capsys)
    assert code == 0 and "exported 2 samples" in out, err
    assert detect_format(tmp_path / "exp") == fmt
    import_dataset(tmp_path / "exp", tmp_path / "again", fmt, unlabelled="ignore")
    a, b = open_labelled(first / "train"), open_labelled(tmp_path / "again" / "train")
    assert a.classes.names == b.classes.names and len(a) == len(b) == 2
    for x, y in zip(a, b):
        assert x.key == y.key and np.array_equal(x.mask, y.mask) and (x.mask == 255).any()
        if fmt != "voc":  # VOC images are JPEG
            assert np.array_equal(x.image, y.image)


@pytest.mark.parametrize("fmt", ["voc", "folder"])
def test_export_keeps_the_split_of_its_source(tmp_path, capsys, fmt):
    make_coco(tmp_path / "coco")
    import_dataset(tmp_path / "coco", tmp_path / "first", "coco", split="val")
    code, out, err = _cli(["data", "export", str(tmp_path / "first" / "val"), str(tmp_path / "exp"), "--format", fmt],
                          capsys)
    assert code == 0 and "(split val)" in out, err
    listed = sorted(p.name for p in (tmp_path / "exp").rglob("*") if p.name in ("train.txt", "val.txt", "train", "val"))
    assert listed == ["val" if fmt == "folder" else "val.txt"]
    summary = import_dataset(tmp_path / "exp", tmp_path / "again", fmt, split="val")  # the val export re-imports as val
    assert summary["images"] == 2
    if fmt == "voc":  # a VOC split list as the source keeps its split too; --split still chooses
        from labelgen.data.export import export_dataset

        listing = tmp_path / "exp" / "ImageSets" / "Segmentation" / "val.txt"
        assert export_dataset(listing, tmp_path / "exp2", "voc")["split"] == "val"
        assert export_dataset(listing, tmp_path / "exp3", "voc", split="test")["split"] == "test"
        assert (tmp_path / "exp3" / "ImageSets" / "Segmentation" / "test.txt").is_file()
        assert export_dataset(tmp_path / "exp", tmp_path / "exp4", "voc")["split"] == "train"  # a VOC root: none


def test_export_shards_and_workspace_annotations(tmp_path):
    from labelgen.data.export import export_dataset
    from labelgen.student.testing import CLASSES, make_shards

    shards = make_shards(tmp_path / "shards", 3, (16, 16))
    summary = export_dataset(shards, tmp_path / "coco", "coco")
    assert summary["samples"] == 3
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == list(CLASSES.names)
    again = import_dataset(tmp_path / "coco", tmp_path / "imp", "coco")
    assert again["images"] == 3
    # a workspace (the app's annotations): annotated images export, unannotated ones are skipped and counted
    ws = tmp_path / "ws"
    (ws / "workspace.json").parent.mkdir()
    (ws / "workspace.json").write_text(json.dumps({"backend": "dcgan", "checkpoint": None,
                                                   "classes": CLASSES.to_json()["classes"]}))
    for name in ("a", "b"):
        write_png(ws / "annotations" / f"{name}.png", _image(7, (16, 16)))
        (ws / "annotations" / f"{name}.json").write_text(json.dumps({"seed": 1}))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:9, 3:7] = 2
    write_png(ws / "annotations" / "a.mask.png", mask, CLASSES.palette)
    summary = export_dataset(ws, tmp_path / "voc", "voc")
    assert summary["samples"] == 1 and summary["skipped_unlabelled"] == 1
    voc = open_labelled(tmp_path / "voc")
    assert voc.classes.names == CLASSES.names and np.array_equal(voc[0].mask, mask)


def test_export_refuses_existing_output_and_empty_source(tmp_path):
    from labelgen.data.export import export_dataset

    make_coco(tmp_path / "coco")
    import_dataset(tmp_path / "coco", tmp_path / "first", "coco")
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataError, match="already exists"):
        export_dataset(tmp_path / "first" / "train", tmp_path / "taken", "voc")
    for mask in (tmp_path / "first" / "train" / "masks").iterdir():
        mask.unlink()
    with pytest.raises(DataError, match="no labelled samples to export"):
        export_dataset(tmp_path / "first" / "train", tmp_path / "new", "voc")
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.partial").exists()


# ---------------------------------------------------------------- 0/255 binary masks, data info
def make_binary_folder(root: Path, n: int = 4) -> Path:
    ClassList.from_names(["background", "horse"]).save(root / "classes.json")
    for i in range(n):
        image = _image(i, (32, 32)) // 4
        mask = np.zeros((32, 32), np.uint8)
        mask[4 + i:20 + i, 6:22] = 255
        image[mask == 255] = (230, 200, 40)
        Image.fromarray(image).save(_mk(root / "train" / "images") / f"{i}.png")
        Image.fromarray(mask).save(_mk(root / "train" / "masks") / f"{i}.png")  # mode L, values 0/255
    return root / "train"


def test_binary_0_255_masks_read_as_foreground_with_a_notice(tmp_path, capsys):
    import subprocess
    import sys

    split = make_binary_folder(tmp_path)
    ds = open_labelled(split, require_masks=True)
    notice = (f"warning: {split}: 2 classes and masks of only 0 and 255: reading 255 as class 1 'horse' (a binary "
              f"foreground mask), not as ignore")
    assert capsys.readouterr().err == notice + "\n"
    assert set(np.unique(ds[0].mask)) == {0, 1} and int((ds[0].mask == 1).sum()) == 256
    # what a user sees: the one line, not a Python UserWarning with its source line
    info = subprocess.run([sys.executable, "-m", "labelgen.cli", "data", "info", str(split)], capture_output=True,
                          text=True, timeout=300)
    assert info.returncode == 0 and "horse: 25.0% of labelled pixels" in info.stdout
    assert "ignore (255): 0.0%" in info.stdout and info.stderr.splitlines() == [notice], info.stderr
    # a folder whose (sampled) masks also hold 1 keeps 255 = ignore
    mask = np.asarray(Image.open(split / "masks" / "3.png")).copy()
    mask[0, 0] = 1
    Image.fromarray(mask).save(split / "masks" / "3.png")
    assert not open_labelled(split).binary_255 and int((open_labelled(split)[3].mask == 255).sum()) == 256


def test_binary_folder_with_a_stray_class_1_mask_is_refused(tmp_path, capsys):
    split = make_binary_folder(tmp_path, n=20)  # more masks than are sampled: the last is not looked at
    mask = np.asarray(Image.open(split / "masks" / "9.png")).copy()
    mask[0, 0] = 1
    Image.fromarray(mask).save(split / "masks" / "9.png")
    ds = open_labelled(split)
    assert "reading 255 as class 1" in capsys.readouterr().err
    assert not any(p.name == "9.png" for p in ds.mask_paths[::max(1, 20 // 16)][:16])
    with pytest.raises(DataError, match="9.png: has class-1 pixels while this folder's masks use 0/255"):
        ds[ds.image_paths.index(split / "images" / "9.png")]


def test_data_info_warns_about_empty_classes_and_mostly_ignored(tmp_path, capsys):
    ClassList.from_names(["background", "a", "b"]).save(tmp_path / "classes.json")
    mask = np.full((10, 10), 255, np.uint8)
    mask[:3] = 0
    mask[3:4] = 1
    write_png(tmp_path / "images" / "x.png", _image(0, (10, 10)))
    write_png(tmp_path / "masks" / "x.png", mask)
    code, out, err = _cli(["data", "info", str(tmp_path)], capsys)
    assert code == 0 and "background: 75.0% of labelled pixels" in out and "ignore (255): 60.0%" in out
    assert "warning: class 'b' has no pixels" in err and "warning: 60% of the mask pixels" in err


def test_binary_folder_trains_its_foreground(tmp_path, capsys):
    import torch

    from labelgen.student.evaluate import evaluate_folder
    from labelgen.student.models import Student
    from labelgen.student.train import TrainOptions, train

    split = make_binary_folder(tmp_path / "horses", n=8)
    torch.set_num_threads(1)
    result = train(TrainOptions(mode="supervised", data=str(split), out=str(tmp_path / "run"), encoder="resnet18",
                                image_size=(32, 32), batch_size=4, max_steps=40, lr=3e-3, progress=False,
                                warmup_steps=0, augment=False))
    assert "reading 255 as class 1" in capsys.readouterr().err
    reloaded = Student.from_pretrained(result.run_dir)
    model, config = reloaded.net, reloaded.student_config
    scores, _ = evaluate_folder(model, config, split)
    assert scores.per_class_iou[1] > 0.5, scores.per_class_iou  # the foreground was learnt, not background alone

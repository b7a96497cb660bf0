"""The one rule for bringing a photo in (labelgen.imaging.fit_photo): `labelgen import`, the app's import and teacher
evaluation store the same pixels for the same photo + mask, the whole photo stretched, with a notice when its
aspect ratio is far from the teacher's."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from labelgen.app import core
from labelgen.cli import main
from labelgen.data.classes import ClassList
from labelgen.heads.train import real_images
from labelgen.imaging import fit_photo, resize_image, resize_mask
from labelgen.workspace import Workspace, create_workspace
from teacher_fakes import CLASSES, layout, render

torch.set_num_threads(1)
APP_FILE = str(core.__file__).replace("core.py", "streamlit_app.py")


def _split(root, photo: np.ndarray, mask: np.ndarray):
    """A project split folder (images/ + masks/ + classes.json) holding one photo p.png and its index mask."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(photo).save(root / "images" / "p.png")
    Image.fromarray(mask).save(root / "masks" / "p.png")
    ClassList.from_names(CLASSES.split(",")).save(root / "classes.json")
    return root


def _workspace(root) -> Workspace:
    return create_workspace(root, "teacher_fakes:FakeDiffusion", CLASSES.split(","))  # 32x32, encodes images


def _stored(ws: Workspace, annotation_id: str = "r000001") -> tuple[bytes, bytes]:
    return ws.image_path(annotation_id).read_bytes(), ws.mask_path(annotation_id).read_bytes()


def test_a_photo_and_its_mask_store_the_same_pixels_through_labelgen_import_and_the_app(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    photo, mask = render(40, 80)[16:64], layout(40, 80)[16:64]  # 48x80 (W/H 1.67), the teacher 32x32 (1.00)
    split = _split(tmp_path / "photos", photo, mask)
    cli_ws, app_ws = _workspace(tmp_path / "cli"), _workspace(tmp_path / "app")
    with pytest.warns(UserWarning, match=r"a 48x80 photo is stretched to 32x32 .*crop it first"):
        main(["import", "-w", str(cli_ws.root), "--images", str(split / "images"), "--masks", str(split / "masks")])

    monkeypatch.setenv("LABELGEN_WORKSPACE", str(app_ws.root))
    monkeypatch.setenv(core.IMPORT_ROOTS_ENV, str(tmp_path / "photos"))
    at = AppTest.from_file(APP_FILE, default_timeout=60).run()
    at.text_input(key="import_folder").input(str(split / "images"))
    at.text_input(key="import_masks").input(str(split / "masks"))
    with pytest.warns(UserWarning, match="a 48x80 photo is stretched"):  # on the server's stderr too
        at.button(key="import_folder_btn").click().run()
    assert not at.exception and not at.error, (at.exception, at.error)
    assert any(w.value.startswith("p.png: a 48x80 photo is stretched to 32x32") for w in at.warning)

    assert _stored(app_ws) == _stored(cli_ws)  # the same files, byte for byte
    image, _, stored_mask = cli_ws.read_annotation("r000001")
    np.testing.assert_array_equal(image, resize_image(photo, (32, 32)))  # the whole photo, stretched: no crop
    np.testing.assert_array_equal(stored_mask, resize_mask(mask, (32, 32)))
    # evaluation brings the same photo in the same way
    with pytest.warns(UserWarning, match="a 48x80 photo is stretched"):
        [(_, eval_image, eval_mask)] = list(real_images(cli_ws.teacher(head=False), split, len(cli_ws.classes)))
    np.testing.assert_array_equal(eval_image, image)
    np.testing.assert_array_equal(eval_mask[0].numpy(), stored_mask)


@pytest.mark.parametrize("height, width", [(64, 64), (64, 72)])  # the teacher's aspect, and 12.5 % off it
def test_a_photo_near_the_teachers_aspect_gives_exactly_resize_image_and_no_notice(tmp_path, height, width):
    photo, mask = render(41, 80)[:height, :width], layout(41, 80)[:height, :width]
    split = _split(tmp_path / "photos", photo, mask)
    cli_ws, app_ws = _workspace(tmp_path / "cli"), _workspace(tmp_path / "app")
    roots = [tmp_path / "photos"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        main(["import", "-w", str(cli_ws.root), "--images", str(split / "images"), "--masks", str(split / "masks")])
        images = core.folder_images(app_ws, roots, str(split / "images"))
        ids, notices = core.import_real_images(app_ws, images, core.folder_masks(app_ws, roots, str(split / "images"),
                                                                                 str(split / "masks"), images))
    assert ids == ["r000001"] and notices == []
    assert _stored(app_ws) == _stored(cli_ws)
    image, _, stored_mask = app_ws.read_annotation("r000001")
    np.testing.assert_array_equal(image, resize_image(photo, (32, 32)))
    np.testing.assert_array_equal(stored_mask, resize_mask(mask, (32, 32)))


def test_fit_photo_notices_only_aspect_ratios_more_than_25_percent_apart():
    for height, width, noticed in [(40, 50, False), (50, 40, False), (40, 51, True), (51, 40, True)]:
        photo = np.zeros((height, width, 3), np.uint8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image, mask = fit_photo(photo, (20, 20))
            fit_photo(photo, (20, 20), notice=False)
        assert image.shape == (20, 20, 3) and mask is None
        assert len(caught) == int(noticed), (height, width, [str(w.message) for w in caught])
    with pytest.warns(UserWarning, match=r"^a 10x40 photo is stretched to 20x20 \(HxW\): its aspect ratio \(W/H 4.00\)"):
        fit_photo(np.zeros((10, 40, 3), np.uint8), (20, 20))


def test_the_notice_is_one_line_on_the_command_line(tmp_path):
    """Through the console program the stretch notice is one `warning: ...` line (no Python source line)."""
    import subprocess
    import sys
    from pathlib import Path

    from teacher_fakes import subprocess_env

    photo, mask = render(40, 80)[16:64], layout(40, 80)[16:64]  # 48x80: far from the teacher's 32x32
    split = _split(tmp_path / "photos", photo, mask)
    ws = _workspace(tmp_path / "ws")
    proc = subprocess.run([str(Path(sys.executable).parent / "labelgen"), "import", "-w", str(ws.root), "--images",
                           str(split / "images")], capture_output=True, text=True, timeout=300,
                          env={**subprocess_env(), "LABELGEN_PLUGINS": "teacher_fakes", "LABELGEN_DEBUG": ""})
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "%|" not in ln]  # no progress bars
    assert len(lines) == 1 and lines[0].startswith("warning: a 48x80 photo is stretched to 32x32"), proc.stderr

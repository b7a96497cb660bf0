"""Assisted annotation on the server (app/assist.py): superpixel label maps for the canvas, the label-map
run-length code, and the app's launch without a Deploy button (the browser side: tests/test_app_browser.py)."""
from __future__ import annotations

import numpy as np
import pytest

from labelgen.app.assist import SUPERPIXELS, superpixels
from labelgen.app.core import AppError, rle_encode
from teacher_fakes import layout, render


@pytest.mark.parametrize("method", list(SUPERPIXELS))
def test_superpixels_partition_the_image_along_its_edges(method):
    image = render(3, 64)  # a disc and a bar on a noisy background
    small, large = superpixels(image, method, 4), superpixels(image, method, 16)
    for labels in (small, large):
        assert labels.shape == (64, 64) and labels.dtype == np.int32
        assert set(np.unique(labels).tolist()) == set(range(labels.max() + 1))  # 0..K-1, no gaps
    assert small.max() > large.max()  # the size sets how many segments
    truth = layout(3, 64)
    # segments follow the objects: nearly every segment lies (90 %+) inside one true region
    purity = [np.bincount(truth[small == k]).max() / (small == k).sum() for k in range(small.max() + 1)]
    assert np.mean(np.array(purity) >= 0.9) >= 0.9
    np.testing.assert_array_equal(superpixels(image, method, 4), small)  # deterministic


def test_superpixels_refuse_bad_settings():
    image = render(1, 32)
    with pytest.raises(AppError, match="unknown superpixel method"):
        superpixels(image, "watershed")
    with pytest.raises(AppError, match="superpixel size 1"):
        superpixels(image, "SLIC", 1)


def test_label_maps_run_length_encode_beyond_255():
    labels = np.arange(600, dtype=np.int32).repeat(2).reshape(30, 40)
    pairs = np.asarray(rle_encode(labels, np.int32)).reshape(-1, 2)
    assert pairs[:, 0].tolist() == list(range(600)) and (pairs[:, 1] == 2).all()


def test_app_launch_hides_the_deploy_button(tmp_path):
    from labelgen.app.cli import streamlit_command

    cmd = streamlit_command(tmp_path, "127.0.0.1", 8501)
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "viewer"  # no Deploy / rerun / clear cache


def test_status_line_shows_an_inverted_photos_latent_by_size_only():
    from labelgen.app.views.annotate import _shown_recipe

    recipe = {"source": "real", "file": "a.png", "w": [[0.1] * 512] * 14, "noise": {"b4.conv1": "AAAA"},
              "inversion": {"steps": 300, "psnr": 27.5}}
    shown = _shown_recipe(recipe)
    assert shown["w"] == "<14 entries>" and shown["noise"] == "<1 entries>" and shown["inversion"]["psnr"] == 27.5
    assert _shown_recipe({"seed": 3, "truncation": 1.0}) == {"seed": 3, "truncation": 1.0}

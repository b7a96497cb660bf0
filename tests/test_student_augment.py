"""The ``strong`` augmentation policy (labelgen.student.augment): image, hard mask and soft labels stay aligned
(an image whose colour encodes its label still shows each pixel's label after crop, resize and flip), colour
changes touch the image only, draws are seeded, and a student trains with it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from labelgen.errors import LabelgenError
from labelgen.student.data import RawSample, StudentDataset, one_hot
from labelgen.student.models import IMAGENET_MEAN, IMAGENET_STD
from labelgen.student.testing import make_shards
from labelgen.student.train import TrainOptions, train

PALETTE = np.array([[20, 20, 20], [230, 30, 30], [30, 230, 30], [30, 30, 230]], np.uint8)  # class c -> colour
RAW = (48, 72)  # stored sample size (H, W)
SIZE = (32, 48)  # training size


class ColourCoded:
    """A source whose image is PALETTE[label] of random 8x8 blocks (not mirror-symmetric), soft = one-hot."""

    def __init__(self, n: int = 3):
        rng = np.random.default_rng(0)
        self.masks = [np.kron(rng.integers(0, 4, (RAW[0] // 8, RAW[1] // 8)), np.ones((8, 8), int)).astype(np.uint8)
                      for _ in range(n)]
        self.metas = [{} for _ in range(n)]
        self.soft_fraction = 1.0

    def __len__(self) -> int:
        return len(self.masks)

    def load(self, i: int, num_classes: int) -> RawSample:
        mask = self.masks[i]
        return RawSample(str(i), PALETTE[mask], mask, {}, one_hot(mask, num_classes))


def _dataset(policy: str, colour: bool = False, augment: bool = True) -> StudentDataset:
    return StudentDataset(ColourCoded(), 4, SIZE, IMAGENET_MEAN, IMAGENET_STD, augment=augment, want_soft=True,
                          policy=policy, colour=colour, warn=False)


def _interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood has one label (away from block edges, where resizing mixes colours)."""
    m = mask.numpy().astype(int)
    same = np.ones_like(m, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= np.roll(np.roll(m, dy, 0), dx, 1) == m
    same[[0, -1], :] = same[:, [0, -1]] = False
    return torch.from_numpy(same)


def _pixel_labels(item) -> torch.Tensor:
    """The class whose palette colour is nearest to each pixel of the (unnormalised) image."""
    rgb = (item["image_pm1"] + 1) * 127.5  # [3, H, W]
    distances = ((rgb[None] - torch.from_numpy(PALETTE).float()[:, :, None, None]) ** 2).sum(1)  # [4, H, W]
    return distances.argmin(0)


def test_strong_augmentation_keeps_image_mask_and_soft_labels_aligned():
    data, plain = _dataset("strong"), _dataset("strong", augment=False)
    changed = 0
    for epoch in range(8):
        for index in range(3):
            item, base = data[(index, epoch)], plain[(index, epoch)]
            assert item["image"].shape == (3, *SIZE) and item["mask"].shape == SIZE and item["soft"].shape == (4, *SIZE)
            inside = _interior(item["mask"])
            assert inside.float().mean() > 0.2
            # the colour of each pixel still encodes the mask's label there; the soft labels agree with the mask
            assert (_pixel_labels(item) == item["mask"].long())[inside].float().mean() > 0.97
            assert (item["soft"].argmax(0) == item["mask"].long())[inside].float().mean() > 0.97
            changed += not torch.equal(item["mask"], base["mask"])
    assert changed >= 20  # crops (35-100 % of the area) move nearly every sample
    again = _dataset("strong")[(1, 3)]
    assert torch.equal(again["image"], data[(1, 3)]["image"]) and torch.equal(again["soft"], data[(1, 3)]["soft"])


def test_strong_colour_touches_the_image_only():
    geometric, coloured = _dataset("strong"), _dataset("strong", colour=True)
    recoloured = 0
    for epoch in range(6):
        a, b = geometric[(0, epoch)], coloured[(0, epoch)]
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["soft"], b["soft"])  # same draw, labels untouched
        recoloured += not torch.allclose(a["image"], b["image"])
    assert recoloured >= 3


def test_strong_crop_box_stays_inside_and_covers_the_area_range():
    from labelgen.student.augment import StrongAugment

    strong, rng = StrongAugment(), np.random.default_rng(1)
    areas = []
    for _ in range(200):
        top, left, ch, cw = strong.crop_box(*RAW, rng)
        assert 0 <= top and top + ch <= RAW[0] and 0 <= left and left + cw <= RAW[1] and ch >= 1 and cw >= 1
        areas.append(ch * cw / math.prod(RAW))
    assert min(areas) < 0.45 and max(areas) > 0.9


def test_a_student_trains_with_strong_augmentation(tmp_path: Path):
    shards = make_shards(tmp_path / "shards", 8, (32, 32))
    options = dict(mode="label-distill", data=str(shards), encoder="resnet18", image_size=(32, 32), batch_size=4,
                   max_steps=3, lr=3e-3, progress=False, warmup_steps=0, augment_policy="strong")
    result = train(TrainOptions(out=str(tmp_path / "run"), **options))
    assert result.steps == 3 and all(math.isfinite(v) for v in result.losses)
    import json

    assert json.loads((tmp_path / "run" / "student_config.json").read_text())["train"]["augment_policy"] == "strong"
    with pytest.raises(LabelgenError, match="augmentation policy"):
        train(TrainOptions(out=str(tmp_path / "bad"), **{**options, "augment_policy": "wild"}))


def test_plain_colour_view_has_the_same_geometry():
    data = StudentDataset(ColourCoded(), 4, SIZE, IMAGENET_MEAN, IMAGENET_STD, want_soft=True, policy="strong",
                          want_plain_colour=True, warn=False)
    recoloured = 0
    for epoch in range(6):
        item = data[(2, epoch)]
        plain = {"image_pm1": item["image_plain"] * torch.tensor(IMAGENET_STD)[:, None, None] * 2
                 + torch.tensor(IMAGENET_MEAN)[:, None, None] * 2 - 1}  # back to [-1, 1]
        inside = _interior(item["mask"])
        assert (_pixel_labels(plain) == item["mask"].long())[inside].float().mean() > 0.97
        recoloured += not torch.allclose(item["image"], item["image_plain"])
    assert recoloured >= 3


def test_consistency_term_trains_and_is_logged(tmp_path: Path):
    import csv

    shards = make_shards(tmp_path / "shards", 8, (32, 32))
    options = dict(mode="label-distill", data=str(shards), encoder="resnet18", image_size=(32, 32), batch_size=4,
                   max_steps=2, lr=3e-3, progress=False, warmup_steps=0, augment_policy="strong")
    plain = train(TrainOptions(out=str(tmp_path / "plain"), **options))
    consistent = train(TrainOptions(out=str(tmp_path / "cons"), consistency_weight=1.0, **options))
    assert all(math.isfinite(v) for v in consistent.losses)
    assert consistent.losses[0] != pytest.approx(plain.losses[0], rel=1e-4)
    with open(tmp_path / "cons" / "log.csv") as f:
        parts = [row["parts"] for row in csv.DictReader(f)]
    assert parts and all("consistency=" in p and "kd=" in p for p in parts)
    with pytest.raises(LabelgenError, match="feature-distill"):
        train(TrainOptions(out=str(tmp_path / "bad"), **{**options, "mode": "feature-distill",
                                                          "teacher": str(tmp_path)}, consistency_weight=1.0))

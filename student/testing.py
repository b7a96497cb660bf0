"""Tiny, learnable data and a fake generator for the student's tests and benchmark.

Scenes: grey noisy background (class 0), a red square (class 1) and a blue disc (class 2) at
seeded positions, so a few optimizer steps visibly lower any loss.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from labelgen.data.classes import ClassList
from labelgen.data.io import write_png
from labelgen.generators.base import Generator, GeneratorOutput

CLASSES = ClassList.from_names(["background", "square", "disc"])


def scene(seed: int, size: tuple[int, int] = (32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [H, W, 3], mask uint8 [H, W]) of one seeded scene."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = rng.normal(110, 20, (h, w, 3)).clip(0, 255)
    mask = np.zeros((h, w), np.uint8)
    s = max(4, h // 4)
    y, x = rng.integers(0, h - s), rng.integers(0, w - s)
    image[y:y + s, x:x + s] = (200, 40, 40)
    mask[y:y + s, x:x + s] = 1
    cy, cx, r = rng.integers(s // 2, h - s // 2), rng.integers(s // 2, w - s // 2), s // 2
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    image[disc] = (40, 60, 210)
    mask[disc] = 2
    return image.astype(np.uint8), mask


def make_folder(root: Path, n: int = 8, size=(32, 32), split: str | None = None, seed0: int = 0) -> Path:
    """The project's labelled folder format: ROOT/[split/]images + masks, ROOT/classes.json."""
    root = Path(root)
    base = root / split if split else root
    (base / "images").mkdir(parents=True, exist_ok=True)
    (base / "masks").mkdir(parents=True, exist_ok=True)
    CLASSES.save(root / "classes.json")
    for i in range(n):
        image, mask = scene(seed0 + i, size)
        write_png(base / "images" / f"{i:04d}.png", image)
        write_png(base / "masks" / f"{i:04d}.png", mask, CLASSES.palette)
    return base


def soft_probs(mask: np.ndarray, num_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Soft labels as ``labelgen synthesize`` stores them: uint8 probabilities [C, H, W] (``confidence``
    on the mask's class)."""
    c = num_classes
    probs = np.full((c, *mask.shape), (1 - confidence) / (c - 1), np.float32)
    for k in range(c):
        probs[k][mask == k] = confidence
    return np.round(probs * 255).astype(np.uint8)


def make_shards(out: Path, n: int = 8, size=(32, 32), per_shard: int = 4, soft: bool = True,
                recipe: bool = True) -> Path:
    """A finished shard set (manifest.json) of seeded scenes, with soft labels and recipes."""
    from labelgen.data.shards import ShardSample, ShardWriter

    writer = ShardWriter(out, CLASSES)
    for shard in range(0, (n + per_shard - 1) // per_shard):
        samples = []
        for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
            image, mask = scene(i, size)
            meta: dict[str, Any] = {"uncertainty": 0.1 * (i % 3)}
            if recipe:
                meta["recipe"] = {"seed": i}
            samples.append(ShardSample(f"s{i:06d}", image, mask, meta,
                                       soft=soft_probs(mask, len(CLASSES)) if soft else None))
        writer.write_shard(shard, samples)
    writer.write_manifest({"producer": "labelgen.student.testing"})
    return Path(out)


class FakeGenerator(Generator):
    """A small conv generator with the real interface (recipes = seeds; it can encode images too).

    Features: [N, 16, H/8, W/8], [N, 8, H/4, W/4], [N, 4, H/2, W/2] for resolution (H, W)."""

    backend = "fake"
    can_encode_images = True

    def __init__(self, size: int = 32):
        super().__init__()
        self.size = size
        torch.manual_seed(1234)
        self.stem = nn.Conv2d(3, 16, 3, stride=8, padding=1)
        self.up1 = nn.Conv2d(16, 8, 3, padding=1)
        self.up2 = nn.Conv2d(8, 4, 3, padding=1)

    @property
    def resolution(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def feature_channels(self) -> list[int]:
        return [16, 8, 4]

    @property
    def feature_strides(self) -> list[int]:
        return [8, 4, 2]

    def features_of_images(self, images: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
        f0 = torch.relu(self.stem(images))  # [N, 16, H/8, W/8]
        f1 = torch.relu(self.up1(nn.functional.interpolate(f0, scale_factor=2.0)))  # [N, 8, H/4, W/4]
        f2 = torch.relu(self.up2(nn.functional.interpolate(f1, scale_factor=2.0)))  # [N, 4, H/2, W/2]
        return [f0, f1, f2]

    def sample(self, seeds: list[int], **options) -> GeneratorOutput:
        return self.features_from_recipes([{"seed": s} for s in seeds])

    def features_from_recipes(self, recipes: list[dict[str, Any]]) -> GeneratorOutput:
        images = torch.stack([torch.from_numpy(scene(int(r["seed"]), self.resolution)[0]).permute(2, 0, 1)
                              for r in recipes]).float() / 127.5 - 1
        with torch.no_grad():
            return GeneratorOutput(images, self.features_of_images(images), [dict(r) for r in recipes])

    @classmethod
    def from_checkpoint(cls, checkpoint, **options) -> "FakeGenerator":
        return cls(**options)

"""Tiny workspaces for the app's tests and demos (DCGAN 64x64 faces, a few images, a synthetic set)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from labelgen.data.classes import ClassList
from labelgen.data.shards import ShardSample, ShardWriter
from labelgen.workspace import Workspace, WorkspaceConfig

CLASSES = ("background", "skin", "hair")


def make_workspace(root: Path | str, n_images: int = 0, synthetic: int = 0, backend: str = "dcgan") -> Workspace:
    """A workspace at ``root``: ``n_images`` generated annotation images (solid test pictures when
    ``backend`` is not loadable), plus a synthetic shard set of ``synthetic`` samples whose metadata
    carries a recipe and an uncertainty score (sample k has uncertainty k / synthetic)."""
    classes = ClassList.from_names(list(CLASSES))
    ws = Workspace.create(root, WorkspaceConfig(backend=backend, checkpoint=None,
                                                classes=classes.to_json()["classes"], resolution=[64, 64]))
    rng = np.random.default_rng(0)
    for k in range(n_images):
        image = (rng.uniform(0, 255, (64, 64, 3))).astype(np.uint8)
        ws.add_annotation(image, {"seed": 1000 + k, "truncation": 1.0})
    if synthetic:
        writer = ShardWriter(ws.synthetic_dir, classes)
        samples = []
        for k in range(synthetic):
            image = np.full((64, 64, 3), 40 + 20 * k % 200, np.uint8)
            mask = np.zeros((64, 64), np.uint8)
            mask[16:48, 16:48] = 1
            mask[:8] = 2
            samples.append(ShardSample(f"s{k:05d}", image, mask,
                                       {"seed": 5000 + k, "truncation": 1.0, "uncertainty": k / synthetic}))
        half = (synthetic + 1) // 2
        writer.write_shard(0, samples[:half])
        if samples[half:]:
            writer.write_shard(1, samples[half:])
        writer.write_manifest({"producer": "labelgen.app.testing"})
    return Workspace(root)

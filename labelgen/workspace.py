"""A workspace: one labelling project on disk, shared by the CLI and the app.

    W/workspace.json                 config: generator backend + checkpoint, resolution, classes,
                                     feature layers / timesteps, head type (see WorkspaceConfig)
    W/annotations/<id>.png           image to annotate (generated or real)
    W/annotations/<id>.json          what recomputes its generator features (seed / latent / noise,
                                     or {"source": "real"} for imported images)
    W/annotations/<id>.mask.png      index mask, absent until annotated (CVAT or any paint program may
                                     drop one in: 0..C-1, 255 = ignore, or the class colours)
    W/heads/                         trained task heads (config JSON + safetensors)
    W/synthetic/                     default synthesis output

All writes are atomic. Relative checkpoint paths in the config are relative to the workspace folder.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelgen.data.classes import ClassList
from labelgen.data.io import (
    atomic_write_json, check_mask, read_image, read_json, read_mask_pixels, write_png,
)
from labelgen.errors import LabelgenError

WORKSPACE_ENV = "LABELGEN_WORKSPACE"
CONFIG_NAME = "workspace.json"
ANNOTATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class WorkspaceConfig:
    backend: str  # generator backend name (labelgen.generators.BACKENDS)
    checkpoint: str | None  # path (absolute, or relative to the workspace); None = backend default
    classes: list[dict]  # [{"id", "name", "color"}]
    resolution: list[int] = field(default_factory=list)  # [H, W]; filled from the generator
    generator_options: dict[str, Any] = field(default_factory=dict)  # e.g. truncation, DDIM steps
    feature_layers: list[int] | None = None  # indices into the generator's feature levels; None = all
    timesteps: list[int] = field(default_factory=lambda: [50, 150, 250])  # diffusion feature timesteps
    head: dict[str, Any] = field(default_factory=lambda: {"type": "pixel-mlp", "ensemble": 3})

    @property
    def class_list(self) -> ClassList:
        return ClassList.from_json({"classes": self.classes})


def default_workspace_path() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or os.getcwd())


class Workspace:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        config_path = self.root / CONFIG_NAME
        if not config_path.is_file():
            raise LabelgenError(f"{self.root}: not a labelgen workspace (no {CONFIG_NAME}; run `labelgen init`)")
        raw = read_json(config_path)
        try:
            self.config = WorkspaceConfig(**raw)
        except TypeError as e:
            raise LabelgenError(f"{config_path}: bad workspace config ({e})") from None
        self.classes = self.config.class_list
        self._generator = None

    # ---- layout ----
    @property
    def annotations_dir(self) -> Path:
        return self.root / "annotations"

    @property
    def heads_dir(self) -> Path:
        return self.root / "heads"

    @property
    def synthetic_dir(self) -> Path:
        return self.root / "synthetic"

    def save_config(self) -> None:
        atomic_write_json(self.root / CONFIG_NAME, asdict(self.config))

    @classmethod
    def create(cls, root: Path | str, config: WorkspaceConfig) -> "Workspace":
        root = Path(root)
        if (root / CONFIG_NAME).exists():
            raise LabelgenError(f"{root}: already a workspace")
        root.mkdir(parents=True, exist_ok=True)
        (root / "annotations").mkdir(exist_ok=True)
        atomic_write_json(root / CONFIG_NAME, asdict(config))
        return cls(root)

    def checkpoint_path(self) -> Path | None:
        if self.config.checkpoint is None:
            return None
        p = Path(self.config.checkpoint)
        return p if p.is_absolute() else self.root / p

    # ---- generator ----
    def generator(self):
        """The workspace's generator (loaded once)."""
        if self._generator is None:
            from labelgen.generators import from_checkpoint

            self._generator = from_checkpoint(self.config.backend, self.checkpoint_path(),
                                              **self.config.generator_options).eval()
        return self._generator

    # ---- annotation store ----
    def check_id(self, annotation_id: str) -> str:
        """Ids come from the browser too: only [A-Za-z0-9_-], so a path never leaves the workspace."""
        if not ANNOTATION_ID.match(annotation_id or ""):
            raise LabelgenError(f"bad annotation id {annotation_id!r}")
        return annotation_id

    def image_path(self, annotation_id: str) -> Path:
        return self.annotations_dir / f"{self.check_id(annotation_id)}.png"

    def recipe_path(self, annotation_id: str) -> Path:
        return self.annotations_dir / f"{self.check_id(annotation_id)}.json"

    def mask_path(self, annotation_id: str) -> Path:
        return self.annotations_dir / f"{self.check_id(annotation_id)}.mask.png"

    def annotation_ids(self) -> list[str]:
        if not self.annotations_dir.is_dir():
            return []
        return sorted(p.stem for p in self.annotations_dir.glob("*.json") if (p.with_suffix(".png")).is_file())

    def annotated_ids(self) -> list[str]:
        return [i for i in self.annotation_ids() if self.mask_path(i).is_file()]

    def read_annotation(self, annotation_id: str) -> tuple[np.ndarray, dict, np.ndarray | None]:
        """(image uint8 [H, W, 3], recipe, mask uint8 [H, W] or None)."""
        image = read_image(self.image_path(annotation_id))
        recipe = read_json(self.recipe_path(annotation_id))
        mask = self.read_mask(annotation_id, image.shape)
        return image, recipe, mask

    def read_mask(self, annotation_id: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        path = self.mask_path(annotation_id)
        if not path.is_file():
            return None
        pixels = read_mask_pixels(path)
        mask = pixels if pixels.ndim == 2 else self.classes.colour_to_index(pixels, path)
        if image_shape is not None:
            check_mask(mask, image_shape, len(self.classes), path)
        return mask

    def save_mask(self, annotation_id: str, mask: np.ndarray) -> Path:
        """Atomically write an index mask uint8 [H, W] (validated against the image and classes)."""
        image = read_image(self.image_path(annotation_id))
        check_mask(np.asarray(mask, dtype=np.uint8), image.shape, len(self.classes), self.mask_path(annotation_id))
        write_png(self.mask_path(annotation_id), np.asarray(mask, dtype=np.uint8), self.classes.palette)
        return self.mask_path(annotation_id)

    def add_annotation(self, image: np.ndarray, recipe: dict, annotation_id: str | None = None) -> str:
        """Store a new image + recipe; returns its id (``g000001`` for generated, ``r000001`` for real)."""
        prefix = "r" if recipe.get("source") == "real" else "g"
        if annotation_id is None:
            taken = {i for i in self.annotation_ids() if i.startswith(prefix)}
            n = 1 + max((int(i[1:]) for i in taken if i[1:].isdigit()), default=0)
            annotation_id = f"{prefix}{n:06d}"
        self.check_id(annotation_id)
        write_png(self.image_path(annotation_id), image)
        atomic_write_json(self.recipe_path(annotation_id), recipe)  # written last: marks the entry complete
        return annotation_id

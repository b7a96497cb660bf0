"""What a stage reads besides its Teacher: the annotated items, and a store of their teacher features.

    Annotations(classes, {"a": (image, recipe, mask), ...})   items in memory (a script, a test)
    Workspace(W)                                               the same reads over W/annotations/ (labelgen.workspace)
    FeatureStore(W / "cache" / "features")                     Teacher.features of items, kept on disk; FeatureStore()
                                                               keeps them in memory

An item is an image uint8 [H, W, 3] at the teacher's resolution, its recipe (labelgen.teacher.recipe_of: a generated
sample's seed, an inverted photo's latent, ``{"source": "real"}`` for a photo) and its index mask uint8 [H, W] (0..C-1,
255 = ignore) or None. ``train_heads``, ``tune_features`` and the app's predictions take one of each.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch



class Annotations:
    """Annotated items held in memory, read as a workspace's are (``annotated_ids``, ``read_item``, ``read_mask``)."""

    annotations_dir = "the given annotations"  # what a refusal names (a workspace: W/annotations)

    def __init__(self, classes, items: dict[str, tuple[np.ndarray, dict[str, Any], np.ndarray | None]]):
        self.classes = classes
        self.items = dict(items)

    def annotated_ids(self) -> list[str]:
        return sorted(i for i, (_, _, mask) in self.items.items() if mask is not None)

    def read_item(self, annotation_id: str) -> tuple[np.ndarray, dict[str, Any]]:
        image, recipe, _ = self.items[annotation_id]
        return np.asarray(image, dtype=np.uint8), recipe

    def read_mask(self, annotation_id: str, image_shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        from labelgen.data.io import check_mask

        mask = self.items[annotation_id][2]
        if mask is not None and image_shape is not None:
            check_mask(np.asarray(mask, dtype=np.uint8), image_shape, len(self.classes), annotation_id)
        return None if mask is None else np.asarray(mask, dtype=np.uint8)


class FeatureStore:
    """``Teacher.features`` of items, kept for reuse while the teacher (generator id, levels) and the item (recipe,
    pixels) stay the same: in safetensors files under ``folder`` (a workspace's W/cache/features/; safe to delete),
    or in this object's memory without one; ``keep=False``: nowhere (every call computes)."""

    def __init__(self, folder: Path | str | None = None, keep: bool = True):
        self.folder = None if folder is None else Path(folder)
        self.keep = keep
        self._memory: dict[str, tuple[str, list[torch.Tensor]]] = {}

    def features(self, teacher, key: str, image: np.ndarray, recipe: dict[str, Any] | None = None,
                 mirror: bool = False) -> list[torch.Tensor]:
        """Selected native-resolution features, [1, C_i, h_i, w_i] on the CPU, of one item: its ``recipe`` and
        ``image`` (recipe None: a photo; image-encoding teachers); ``mirror``: of the horizontally mirrored image
        (``Teacher.flipped_features``, head training's flip augmentation, flip test-time augmentation)."""
        parts = ([] if recipe is None else [recipe]) + [hashlib.sha256(image.tobytes()).hexdigest(), list(image.shape)]

        def compute() -> list[torch.Tensor]:
            if mirror:
                features = teacher.flipped_features([image])
            else:
                features = teacher.features(recipes=None if recipe is None else [recipe], images=[image])
            return [f.cpu() for f in features]

        return self.cached(teacher, key, parts + (["mirror"] if mirror else []), compute)

    def annotation(self, teacher, annotations, annotation_id: str, mirror: bool = False) -> list[torch.Tensor]:
        """:meth:`features` of an annotated item of ``annotations`` (a workspace or :class:`Annotations`)."""
        image, recipe = annotations.read_item(annotation_id)
        return self.features(teacher, f"annotations/{annotation_id}" + (".mirror" if mirror else ""), image, recipe,
                             mirror)

    def cached(self, teacher, key: str, fingerprint_parts: list, compute: Callable[[], list[torch.Tensor]]
               ) -> list[torch.Tensor]:
        """``compute()`` (a list of tensors) kept under ``key``; reused while the teacher's generator id (weights
        included), its levels and ``fingerprint_parts`` stay the same."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from labelgen.data.io import save_safetensors

        if not self.keep:
            return compute()
        fingerprint = hashlib.sha256(json.dumps([teacher.generator_id, teacher.levels, fingerprint_parts],
                                                sort_keys=True).encode()).hexdigest()
        if self.folder is None:
            kept = self._memory.get(key)
            if kept is None or kept[0] != fingerprint:
                kept = (fingerprint, compute())
                self._memory[key] = kept
            return kept[1]
        path = self.folder / f"{key}.safetensors"
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    fresh = (f.metadata() or {}).get("fingerprint") == fingerprint
                if fresh:
                    tensors = load_file(str(path))
                    return [tensors[f"level{i}"] for i in range(len(tensors))]
            except Exception:  # an unreadable file: computed again
                pass
        features = compute()
        save_safetensors(path, {f"level{i}": f.float() for i, f in enumerate(features)}, {"fingerprint": fingerprint})
        return features

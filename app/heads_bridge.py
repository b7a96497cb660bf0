"""The app's window on the trained heads: the teacher's own prediction API, nothing re-implemented.

Every prediction is :mod:`labelgen.heads.predict` (mask = argmax of the ensemble mean, mean
probabilities, per-pixel uncertainty = ensemble JS divergence (entropy for one member), image
score) on the workspace's saved head (``W/heads``). Features come from the workspace like the
teacher's: annotations through ``Workspace.annotation_features`` (disk-cached), synthetic samples
from their recipe (GANs, ``features_from_recipes``) or their pixels (diffusion teachers,
``predict_image``).
"""
from __future__ import annotations

import numpy as np

from labelgen.errors import LabelgenError
from labelgen.heads.predict import Prediction, predict_annotation as _predict_annotation, predict_features, predict_image
from labelgen.workspace import WORKSPACE_RECIPE_KEYS, Workspace

_HEADS: dict[str, tuple[tuple, object]] = {}  # heads dir -> (file stamps, loaded head)


def has_heads(ws: Workspace) -> bool:
    return (ws.heads_dir / "head_config.json").is_file()


def current_head(ws: Workspace):
    """The saved head (reloaded when its files change, e.g. after a training run)."""
    from labelgen.heads import load_head

    if not has_heads(ws):
        raise LabelgenError("no trained heads yet (Train page or `labelgen train-heads`)")
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(ws.heads_dir.glob("head*")))
    cached = _HEADS.get(str(ws.heads_dir))
    if cached is None or cached[0] != stamp:
        cached = (stamp, load_head(ws.heads_dir))
        _HEADS[str(ws.heads_dir)] = cached
    return cached[1]


def current_head_id(ws: Workspace) -> str | None:
    from labelgen.heads import head_id

    return head_id(ws.heads_dir) if has_heads(ws) else None


def predict_annotation(ws: Workspace, annotation_id: str) -> Prediction:
    """The heads' prediction of an annotation image (``labelgen.heads.predict.predict_annotation``)."""
    return _predict_annotation(ws, current_head(ws), annotation_id)


def predict_sample(ws: Workspace, sample) -> Prediction:
    """The heads' prediction of a synthetic sample (a ``ShardSample`` written by ``labelgen synthesize``):
    recomputed from its ``recipe`` (GAN) or its image (diffusion teachers, also ``--from-images``)."""
    import torch

    head = current_head(ws)
    meta = sample.meta or {}
    if ws.config.can_encode_images:
        return predict_image(ws, head, np.ascontiguousarray(sample.image))
    recipe = meta.get("recipe")
    if not isinstance(recipe, dict) or "seed" not in recipe:
        raise LabelgenError(f"sample {sample.key} has no recipe to recompute its features")
    generator = ws.generator()
    backend_recipe = {k: v for k, v in recipe.items() if k not in WORKSPACE_RECIPE_KEYS}
    with torch.no_grad():
        features = generator.features_from_recipes([backend_recipe]).features
    return predict_features(head, [f.float().cpu() for f in ws.select_levels(features)])[0]

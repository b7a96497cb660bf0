"""Predictions of the workspace's trained heads for the app (pre-fill, uncertainty maps).

Uses the teacher's own pieces: ``load_head(W/heads)`` and the workspace's feature computation
(``Workspace.annotation_features`` / the generator's ``features_from_recipes``).
"""
from __future__ import annotations

import numpy as np

from labelgen.app.core import entropy_map
from labelgen.errors import LabelgenError
from labelgen.workspace import Workspace


def has_heads(ws: Workspace) -> bool:
    return (ws.heads_dir / "head_config.json").is_file()


def _head(ws: Workspace):
    from labelgen.heads import load_head

    return load_head(ws.heads_dir)


def _probs(ws: Workspace, features) -> np.ndarray:
    """Ensemble-mean class probabilities [C, H, W] and member disagreement."""
    head = _head(ws)
    proba = head.predict_proba(list(features))  # [1, K, C, H, W]
    return proba[0].float().cpu().numpy()


def _result(members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = members.mean(axis=0)  # [C, H, W]
    return mean.argmax(axis=0).astype(np.uint8), entropy_map(mean)


def predict_annotation(ws: Workspace, annotation_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(predicted mask uint8 [H, W], uncertainty [H, W] in [0, 1]) of an annotation image."""
    if not has_heads(ws):
        raise LabelgenError("no trained heads yet (Train page or `labelgen train-heads`)")
    if not hasattr(ws, "annotation_features"):
        raise LabelgenError("this labelgen version cannot compute annotation features")
    return _result(_probs(ws, ws.annotation_features(annotation_id)))


def predict_recipe(ws: Workspace, recipe: dict) -> tuple[np.ndarray, np.ndarray]:
    """(predicted mask, uncertainty) of a generated image given its recipe (a synthetic sample's meta)."""
    import torch

    if not has_heads(ws):
        raise LabelgenError("no trained heads yet (Train page or `labelgen train-heads`)")
    generator = ws.generator()
    with torch.no_grad():
        features = generator.features_from_recipes([recipe]).features
    if hasattr(ws, "select_levels"):
        features = ws.select_levels(features)
    return _result(_probs(ws, features))

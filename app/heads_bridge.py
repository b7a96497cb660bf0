"""The app's window on the trained heads: the workspace's :class:`~labelgen.teacher.Teacher`, nothing
re-implemented.

Every prediction is ``Teacher.predict`` (mask = argmax of the ensemble mean, mean probabilities, per-pixel
uncertainty = ensemble JS divergence (entropy for one member), image score) of ``Teacher.features`` of the
item: an annotation (its recipe and stored image, through the workspace's disk cache) or a synthetic sample
(its shard meta and image) — the same features synthesis and distillation use.
"""
from __future__ import annotations

import numpy as np

from labelgen.teacher import ImagePrediction
from labelgen.workspace import Workspace


def has_heads(ws: Workspace) -> bool:
    return ws.has_head()


def current_head_id(ws: Workspace) -> str | None:
    return ws.teacher().head_id if has_heads(ws) else None


def predict_annotation(ws: Workspace, annotation_id: str) -> ImagePrediction:
    """The heads' prediction of an annotation image (features from the workspace's cache)."""
    teacher = ws.teacher()
    return teacher.predict([f.to(teacher.device) for f in ws.annotation_features(annotation_id)])[0]


def predict_sample(ws: Workspace, sample) -> ImagePrediction:
    """The heads' prediction of a synthetic sample (a ``ShardSample`` written by ``labelgen synthesize``)."""
    return ws.teacher().label(recipes=[sample.meta or {}], images=[np.ascontiguousarray(sample.image)])[0]

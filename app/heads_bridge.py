"""The app's window on the trained heads: the workspace's :class:`~labelgen.teacher.Teacher` (the views pass
``ws.teacher()``), nothing re-implemented.

Every prediction is ``Teacher.predict`` (mask = argmax of the ensemble mean, mean probabilities, per-pixel
uncertainty = ensemble JS divergence (entropy for one member), image score) of ``Teacher.features`` of the
item: an annotation (its recipe and stored image, through the workspace's disk cache) or a synthetic sample
(its shard meta and image) — the same features synthesis and distillation use.
"""
from __future__ import annotations

import numpy as np

from labelgen.teacher import ImagePrediction, Teacher
from labelgen.workspace import Workspace


def has_heads(ws: Workspace) -> bool:
    return ws.has_head()


def current_head_id(ws: Workspace) -> str | None:
    return ws.teacher().head_id if has_heads(ws) else None


def predict_annotation(teacher: Teacher, ws: Workspace, annotation_id: str) -> ImagePrediction:
    """``teacher``'s prediction of an annotation image (its features through the workspace's feature store)."""
    features = ws.feature_store.annotation(teacher, ws, annotation_id)
    return teacher.predict([f.to(teacher.device) for f in features])[0]


def predict_sample(teacher: Teacher, sample) -> ImagePrediction:
    """``teacher``'s prediction of a synthetic sample (a ``ShardSample`` written by ``labelgen synthesize``)."""
    return teacher.label(recipes=[sample.meta or {}], images=[np.ascontiguousarray(sample.image)])[0]

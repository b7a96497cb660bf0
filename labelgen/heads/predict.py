"""Predictions of a workspace's trained head, for review screens (the app) and scripts.

    head = load_head(workspace.heads_dir)
    pred = predict_annotation(workspace, head, "g000001")   # mask, mean probabilities, uncertainty
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labelgen.heads.base import TaskHead
from labelgen.synthesis.uncertainty import image_scores, pixel_uncertainty


@dataclass
class Prediction:
    mask: np.ndarray  # uint8 [H, W]: argmax of the ensemble-mean probabilities
    probs: np.ndarray  # float32 [C, H, W]: ensemble-mean probabilities
    uncertainty: np.ndarray  # float32 [H, W]: JS divergence (K > 1) or entropy (K = 1), nats
    score: float  # image score: mean of the top 10 % pixel uncertainties


@torch.no_grad()
def predict_features(head: TaskHead, features: list[torch.Tensor]) -> list[Prediction]:
    """Predictions for a batch of selected feature levels [N, C_i, h_i, w_i]."""
    probs = head.predict_proba(features)  # [N, K, C, H, W]
    uncertainty = pixel_uncertainty(probs)  # [N, H, W]
    scores = image_scores(uncertainty)  # [N]
    mean = probs.mean(dim=1)  # [N, C, H, W]
    masks = mean.argmax(dim=1).to(torch.uint8)  # [N, H, W]
    return [Prediction(masks[k].cpu().numpy(), mean[k].float().cpu().numpy(), uncertainty[k].float().cpu().numpy(),
                       float(scores[k])) for k in range(probs.shape[0])]


def predict_annotation(workspace, head: TaskHead, annotation_id: str) -> Prediction:
    """Prediction for a stored annotation image (features from the workspace's disk cache)."""
    return predict_features(head, workspace.annotation_features(annotation_id))[0]


def predict_image(workspace, head: TaskHead, image: np.ndarray) -> Prediction:
    """Prediction for any image uint8 [H, W, 3] at the generator resolution (diffusion teachers)."""
    return predict_features(head, workspace.image_features(image))[0]

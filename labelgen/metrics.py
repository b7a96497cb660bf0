"""The project's one segmentation metric: IoU from an accumulated confusion matrix.

Every evaluation (head validation, student eval, benchmarks) uses :class:`ConfusionMatrix`.
Conventions (as in the CCP DATACARD): one matrix accumulated over the whole split; pixels whose
target is ``ignore_index`` are skipped; IoU_c = TP / (TP + FP + FN); a class with an empty union
(absent from both prediction and target) has IoU NaN and is left out of the mean; pixel accuracy =
trace / total.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelgen.data.io import IGNORE_INDEX


@dataclass
class Scores:
    miou: float
    per_class_iou: list[float]  # NaN where the class is absent from prediction and target
    pixel_accuracy: float
    confusion: np.ndarray  # [C, C] int64, rows = target, cols = prediction

    def table(self, class_names: list[str] | tuple[str, ...]) -> str:
        """Markdown table: per-class IoU, then mIoU and pixel accuracy."""
        lines = ["| class | IoU |", "|---|---|"]
        for name, iou in zip(class_names, self.per_class_iou):
            lines.append(f"| {name} | {'n/a' if np.isnan(iou) else f'{iou:.4f}'} |")
        lines.append(f"| **mIoU** | **{self.miou:.4f}** |")
        lines.append(f"| pixel accuracy | {self.pixel_accuracy:.4f} |")
        return "\n".join(lines)

    def to_json(self, class_names) -> dict:
        return {"miou": self.miou, "pixel_accuracy": self.pixel_accuracy,
                "per_class": {n: (None if np.isnan(v) else v) for n, v in zip(class_names, self.per_class_iou)}}


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction, target) -> None:
        """Add predictions and targets of any matching shape (numpy arrays or torch tensors of ids)."""
        prediction, target = _numpy(prediction).ravel(), _numpy(target).ravel()
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ")
        keep = target != self.ignore_index
        prediction, target = prediction[keep].astype(np.int64), target[keep].astype(np.int64)
        if target.size and (target.max() >= self.num_classes or target.min() < 0):
            raise ValueError(f"target class id {int(target.max())} out of range 0..{self.num_classes - 1}")
        if prediction.size and (prediction.max() >= self.num_classes or prediction.min() < 0):
            raise ValueError(f"predicted class id {int(prediction.max())} out of range 0..{self.num_classes - 1}")
        self.matrix += np.bincount(target * self.num_classes + prediction,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def compute(self) -> Scores:
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        total = m.sum()
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
        return Scores(miou, [float(v) for v in iou], float(tp.sum() / total) if total else float("nan"), self.matrix.copy())


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)

"""mIoU of a workspace's teacher (diffusion generator features + trained heads) on real labelled images.

    python -m labelgen.training.evaluate_teacher WORKSPACE SPLIT_FOLDER [--limit N] [--json OUT.json]

SPLIT_FOLDER is a project split folder (``images/`` + ``masks/``, e.g. CCP96/test). Images whose size
differs from the generator's are resized (area), masks nearest. The metric is the project's:
one :class:`labelgen.metrics.ConfusionMatrix` over the whole split, ensemble-mean prediction.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click


def evaluate_teacher(workspace_dir: Path, split: Path, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from labelgen.data.folder import open_labelled
    from labelgen.errors import LabelgenError
    from labelgen.heads import load_head
    from labelgen.metrics import ConfusionMatrix
    from labelgen.workspace import Workspace, resize_image, resize_mask

    workspace = Workspace(workspace_dir)
    if not workspace.config.can_encode_images:
        raise LabelgenError(f"{workspace_dir}: the {workspace.config.backend} teacher cannot label real images")
    head = load_head(workspace.heads_dir).eval()
    folder = open_labelled(split, require_masks=True)
    if len(folder.classes) != len(workspace.classes):
        raise LabelgenError(f"{split}: {len(folder.classes)} classes, the workspace has {len(workspace.classes)}")
    matrix = ConfusionMatrix(len(workspace.classes))
    n = len(folder) if limit is None else min(limit, len(folder))
    start = time.monotonic()
    with torch.no_grad():
        for i in tqdm(range(n), desc=f"evaluate {split.name}", unit="image", disable=not progress):
            item = folder[i]
            image, mask = item.image, item.mask
            if image.shape[:2] != workspace.resolution:
                image, mask = resize_image(image, workspace.resolution), resize_mask(mask, workspace.resolution)
            probs = head.predict_proba(workspace.image_features(image))  # [1, K, C, H, W]
            matrix.update(probs.mean(dim=1).argmax(dim=1)[0].numpy(), mask)
    scores = matrix.compute()
    return {"split": str(split), "images": n, "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
            "per_class_iou": dict(zip(workspace.classes.names, [float(v) for v in scores.per_class_iou])),
            "seconds": round(time.monotonic() - start, 1)}


@click.command()
@click.argument("workspace_dir", type=click.Path(path_type=Path))
@click.argument("split", type=click.Path(path_type=Path))
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the scores here.")
def main(workspace_dir: Path, split: Path, limit: int | None, json_out: Path | None):
    """Print mIoU / per-class IoU / pixel accuracy of WORKSPACE's teacher on SPLIT (images/ + masks/)."""
    result = evaluate_teacher(workspace_dir, split, limit)
    click.echo(json.dumps(result, indent=2))
    if json_out:
        from labelgen.data.io import atomic_write_json

        atomic_write_json(json_out, result)


if __name__ == "__main__":
    from labelgen.cli import run_click

    run_click(main)

"""mIoU of a workspace's teacher (diffusion generator features + trained heads) on real labelled images.

    python -m labelgen.training.evaluate_teacher WORKSPACE SPLIT_FOLDER [--limit N] [--json OUT.json]

SPLIT_FOLDER is a project split folder (``images/`` + ``masks/``, e.g. CCP96/test). Images whose size
differs from the generator's are resized by the one rule (labelgen.imaging). The metric is the project's:
one :class:`labelgen.metrics.ConfusionMatrix` over the whole split, ensemble-mean prediction.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from labelgen.cli_types import heads_option, parse_heads


def evaluate_teacher(teacher, split: Path, limit: int | None = None, progress: bool = True, flip: bool = False,
                     store=None) -> dict[str, Any]:
    """Score ``teacher`` (``Teacher.predict``: ensemble mean; ``flip``: with horizontal-flip test-time augmentation)
    on a labelled split (its classes: the teacher's). ``store``: a labelgen.annotations.FeatureStore keeping the
    split's features (several heads scored on the same features; a workspace's: ``Workspace.feature_store``)."""
    from labelgen.heads.train import real_examples
    from labelgen.metrics import ConfusionMatrix

    start = time.monotonic()
    matrix = ConfusionMatrix(teacher.num_classes)
    device, count = teacher.device, 0
    for example in real_examples(teacher, split, teacher.num_classes, store, "eval", limit, progress, mirror=flip):
        features, mask = [f.to(device) for f in example[0]], example[-1]
        flipped = [f.to(device) for f in example[1]] if flip else None
        matrix.update(teacher.predict(features, flipped=flipped).mask.cpu(), mask)
        count += 1
    scores = matrix.compute()
    return {"split": str(split), "images": count, "flip_tta": flip, "miou": scores.miou,
            "pixel_accuracy": scores.pixel_accuracy, "heads": teacher.head_type,
            "per_class_iou": dict(zip(teacher.classes.names, [float(v) for v in scores.per_class_iou])),
            "seconds": round(time.monotonic() - start, 1)}


@click.command()
@click.argument("workspace_dir", type=click.Path(path_type=Path))
@click.argument("split", type=click.Path(path_type=Path))
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Also write the scores here.")
@click.option("--flip", is_flag=True, help="Horizontal-flip test-time augmentation.")
@click.option("--cache", is_flag=True, help="Keep the split's features in the workspace's feature cache.")
@heads_option
def main(workspace_dir: Path, split: Path, limit: int | None, json_out: Path | None, flip: bool, cache: bool,
         heads: str | None):
    """Print mIoU / per-class IoU / pixel accuracy of WORKSPACE's teacher on SPLIT (images/ + masks/)."""
    from labelgen.workspace import Workspace

    workspace = Workspace(workspace_dir)
    result = evaluate_teacher(workspace.teacher(heads=parse_heads(heads)), split, limit, flip=flip,
                              store=workspace.feature_store if cache else None)
    click.echo(json.dumps(result, indent=2))
    if json_out:
        from labelgen.data.io import atomic_write_json

        atomic_write_json(json_out, result)


if __name__ == "__main__":
    from labelgen.cli import run_click

    run_click(main)

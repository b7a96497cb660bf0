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


def evaluate_teacher(workspace_dir: Path, split: Path, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Score the workspace's trained head on a labelled split (labelgen.heads.train.evaluate_head)."""
    from labelgen.heads.train import evaluate_head, real_examples
    from labelgen.workspace import Workspace

    workspace = Workspace(workspace_dir)
    head = workspace.teacher().head  # refused when trained on other generator weights, options or levels
    start = time.monotonic()
    scored = [0]

    def counted(examples):
        for example in examples:
            scored[0] += 1
            yield example

    examples = counted(real_examples(workspace, split, limit=limit, progress=progress))
    scores = evaluate_head(head, examples, len(workspace.classes))
    return {"split": str(split), "images": scored[0], "miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy,
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

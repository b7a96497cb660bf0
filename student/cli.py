"""``student``: train, evaluate, predict with and export the student segmentation network.

    student train --mode MODE --data PATH [--data PATH ...]
                  [--data-weights 1,1,4] --out RUN_DIR [--val FOLDER --val-every N]
    student eval --checkpoint RUN_DIR --data FOLDER [--out DIR] [--weights best|last]
    student predict --checkpoint RUN_DIR --images DIR --out DIR [--weights best|last]
    student export --checkpoint RUN_DIR --onnx FILE [--weights best|last]

Bad input -> one line ``error: ...`` on stderr and exit status 2 (labelgen.cli.run_click); ``student --debug``
or LABELGEN_DEBUG=1 adds the traceback.
"""
from __future__ import annotations

from pathlib import Path

import click

from labelgen.cli import debug_option, format_size, parse_size, run_click, with_quiet
from labelgen.cli_defaults import defaults_of
from labelgen.cli_types import NON_NEGATIVE, POSITIVE, FiniteRange, device_option
from labelgen.student.augment import AUGMENT_POLICIES
from labelgen.student.models import CONVNEXT_STUDENT, architectures
from labelgen.student.onnx_export import MAX_OPSET, MIN_OPSET
from labelgen.student.train import MODES, SCHEDULES, TrainOptions


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@debug_option
def cli():
    """student: a segmentation-models-pytorch network trained from the teacher's synthetic data."""


D = defaults_of(TrainOptions)  # every `student train` default comes from TrainOptions


@cli.command("train")
@click.option("--mode", type=click.Choice(MODES), required=True,
              help="What to learn from (see docs in labelgen.student.distill).")
@click.option("--data", type=click.Path(path_type=Path), required=True, multiple=True,
              help="Synthesis output (tar shards) or a labelled folder (DIR/<split> with images/ + masks/). "
                   "Repeat for several sources (concatenated; same classes).")
@click.option("--data-weights", type=str, default=D["data_weights"],
              help="Comma-separated, one per --data: how often a source's samples are drawn relative to its size "
                   "(e.g. 1,1,4 oversamples the third 4x). Default: in proportion to size.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder (resumed if it has last.pt).")
@click.option("--val", type=click.Path(path_type=Path), default=D["val"],
              help="Labelled folder scored (mIoU) at the end (and every --val-every steps); the best weights are "
                   "kept as RUN_DIR/best.safetensors + best.json.")
@click.option("--val-every", type=click.IntRange(min=1), default=D["val_every"], help="Score --val every N steps.")
@click.option("--arch", type=click.Choice(list(architectures()), case_sensitive=False), default=D["arch"],
              help="segmentation-models-pytorch architecture (its own registry; dpt needs a timm ViT --encoder, "
                   "e.g. tu-vit_tiny_patch16_224).")
@click.option("--encoder", type=str, default=D["encoder"],
              help=f"smp/timm encoder name (DreamTeacher's ConvNeXt student: --arch {CONVNEXT_STUDENT[0]} "
                   f"--encoder {CONVNEXT_STUDENT[1]}).")
@click.option("--encoder-weights", type=str, default=D["encoder_weights"],
              help="Pretrained encoder weights, e.g. imagenet [default: none = random init].")
@click.option("--max-steps", type=click.IntRange(min=1), default=D["max_steps"],
              help="Optimizer steps (overrides --epochs).")
@click.option("--epochs", type=click.IntRange(min=1), default=D["epochs"], help="Epochs (when --max-steps is not given).")
@click.option("--teacher", type=click.Path(path_type=Path), default=D["teacher"],
              help="Workspace whose generator provides features (feature-distill, dreamteacher).")
@click.option("--feature-cache/--no-feature-cache", default=D["feature_cache"],
              help="Keep teacher features in RAM (recipe data).")
@click.option("--features", type=click.Path(path_type=Path), default=D["features"],
              help="Teacher features stored by `labelgen features` over these --data: read (matched by image "
                   "content) instead of running the teacher every batch (feature-distill, dreamteacher); "
                   "with --teacher, refused unless made by that teacher.")
@click.option("--init", "init", type=click.Path(path_type=Path), default=D["init"],
              help="Previous student run folder or .safetensors: load tensors with matching names/shapes.")
@click.option("--tau", type=POSITIVE, default=D["tau"], help="Distillation temperature.")
@click.option("--hard-weight", type=NON_NEGATIVE, default=D["hard_weight"],
              help="Weight of hard-label CE (label modes).")
@click.option("--feature-weight", type=NON_NEGATIVE, default=D["feature_weight"],
              help="Weight of the feature loss.")
@click.option("--label-weight", type=NON_NEGATIVE, default=D["label_weight"],
              help="Weight of the soft-label loss.")
@click.option("--at-weight", type=NON_NEGATIVE, default=D["at_weight"],
              help="Attention-transfer weight in the feature loss.")
@click.option("--uncertainty-weighting/--no-uncertainty-weighting", default=D["uncertainty_weighting"],
              help="Weight samples by 1/(1 + u/mean u) from meta 'uncertainty'.")
@click.option("--class-balance", type=NON_NEGATIVE, default=D["class_balance"],
              help="Per-class loss weights ~ pixel frequency^-P (0 = off, 0.5 = 1/sqrt, 1 = 1/frequency; max 10x): "
                   "rare classes (dress, accessories) count more.")
@click.option("--lr", type=POSITIVE, default=D["lr"], help="Peak learning rate (AdamW).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=D["schedule"], help="LR decay after warm-up.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=D["warmup_steps"],
              help="Linear warm-up [default: 5% of the steps, at most 500].")
@click.option("--batch-size", type=click.IntRange(min=1), default=D["batch_size"], help="Images per step per process.")
@click.option("--image-size", type=str, default=format_size(D["image_size"]), help="Training size HxW.")
@click.option("--workers", type=click.IntRange(min=0), default=D["workers"],
              help="DataLoader worker processes (decode + augment; default from this machine: its cores less 2, at most 12).")
@click.option("--augment/--no-augment", default=D["augment"], help="Flip/affine/colour augmentation.")
@click.option("--augment-policy", type=click.Choice(AUGMENT_POLICIES), default=D["augment_policy"],
              help="basic: flip, mild affine and colour jitter; strong: random crop (35-100 % of the area, resized "
                   "by the one resize rule), flip, strong colour jitter, greyscale, blur (labelgen.student.augment).")
@click.option("--consistency-weight", type=NON_NEGATIVE, default=D["consistency_weight"],
              help="Consistency term: the prediction on the colour-augmented view follows (KL) the prediction on "
                   "the same view without the colour part (detached); 0 = off.")
@click.option("--ema-decay", type=FiniteRange(0, 1, max_open=True), default=D["ema_decay"],
              help="Keep an exponential moving average of the weights (e.g. 0.999): it is what --val scores and what "
                   "best/model.safetensors hold; 0 = off.")
@click.option("--amp/--no-amp", default=D["amp"], help="bf16 autocast + channels_last (GPU only; ignored on CPU).")
@click.option("--seed", type=int, default=D["seed"], help="Seed of init, data order and augmentation.")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch intra-op threads (0 = torch default: all cores). On a 2-core CPU under load --threads 1 is faster.")
@click.option("--save-every", type=click.IntRange(min=1), default=D["save_every"], help="Checkpoint every N steps.")
@click.option("--resume/--no-resume", default=D["resume"], help="Continue from RUN_DIR/last.pt when present.")
@click.option("--progress/--no-progress", default=D["progress"], help="Progress bar (images/s).")
@click.option("--quiet", is_flag=True, help="No progress bar (the same as --no-progress, as on every command).")
@device_option
def train_cmd(**kw):
    """Train a student (any mode may start from --init, e.g. feature-distill -> supervised fine-tune)."""
    from labelgen.student.data import parse_weights
    from labelgen.student.train import train

    threads = kw.pop("threads")
    if kw.pop("quiet"):
        kw["progress"] = False
    if threads:
        import torch

        torch.set_num_threads(threads)
    kw["image_size"] = parse_size(kw["image_size"], "--image-size")
    kw["encoder_weights"] = None if kw["encoder_weights"] in (None, "none", "") else kw["encoder_weights"]
    data = [str(d) for d in kw["data"]]
    kw["data"] = data[0] if len(data) == 1 else data
    kw["data_weights"] = parse_weights(kw["data_weights"], len(data))
    kw = {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}
    result = train(TrainOptions(**kw), log=click.echo)
    if result.losses and result.extra.get("rank", 0) == 0:
        first, last = result.losses[0], result.losses[-1]
        click.echo(f"trained {result.steps} steps ({len(result.losses)} logged), loss {first:.4f} -> {last:.4f}, "
                   f"{result.images_per_s:.1f} images/s -> {result.run_dir}")
        if result.best_miou is not None:
            click.echo(f"best val mIoU {result.best_miou:.4f} at step {result.best_step} -> "
                       f"{result.run_dir / 'best.safetensors'}")


WEIGHTS_OPTION = click.option("--weights", type=click.Choice(["best", "last"]), default=None,
                              help="best.safetensors (selected on --val) or model.safetensors (last step). "
                                   "[default: best if the run has it, else last]")

TTA_OPTION = click.option("--flip/--no-flip", default=False, show_default=True,
                          help="Horizontal-flip test-time augmentation: the mean of the photo's and its mirror image's "
                               "probabilities (two forward passes).")


def _load(checkpoint: Path, weights: str | None, device: str = "cpu"):
    """The student of a run folder on ``device`` (auto | cpu | cuda, labelgen.run.pick_device's meaning)."""
    from labelgen.run import pick_device
    from labelgen.student.models import Student, describe_weights, weights_file

    dev = pick_device(device)
    student = Student.from_pretrained(checkpoint, dev, weights=weights)
    path = weights_file(checkpoint, weights)
    click.echo(f"weights: {describe_weights(path)} on {dev}")
    return student.net, student.student_config, path, dev


@cli.command("eval")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Student run folder.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="Labelled folder (images + masks).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Where the PNGs go (default RUN_DIR/eval).")
@click.option("--grid", type=click.IntRange(min=1), default=8, help="Images in the overlay grid.")
@TTA_OPTION
@WEIGHTS_OPTION
@device_option
def eval_cmd(checkpoint: Path, data: Path, out: Path | None, grid: int, flip: bool, weights: str | None, device: str):
    """mIoU + per-class IoU table; writes confusion.png and overlays.png (image | truth | prediction)."""
    from labelgen.student.evaluate import evaluate_folder, write_eval_outputs

    model, config, weights_path, dev = _load(checkpoint, weights, device)
    scores, kept = evaluate_folder(model, config, data, dev, keep=grid, flip=flip)
    names = [c["name"] for c in config.classes]
    click.echo(f"mIoU: {scores.miou:.4f}")
    click.echo(scores.table(names))
    out = out or checkpoint / "eval"
    cm_path, grid_path = write_eval_outputs(out, scores, kept, config, {"weights": str(weights_path), "flip_tta": flip})
    click.echo(f"wrote {cm_path} and {grid_path}")


@cli.command("predict")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Student run folder.")
@click.option("--images", type=click.Path(path_type=Path), required=True, help="Folder of images.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for index-mask PNGs (class palette).")
@TTA_OPTION
@WEIGHTS_OPTION
@device_option
def predict_cmd(checkpoint: Path, images: Path, out: Path, flip: bool, weights: str | None, device: str):
    """Predict an index mask PNG per image."""
    from labelgen.student.evaluate import predict_folder

    model, config, weights_path, dev = _load(checkpoint, weights, device)
    n = predict_folder(model, config, images, out, dev, flip=flip)
    click.echo(f"wrote {n} masks -> {out}")


@cli.command("pseudo-label")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Student run folder.")
@click.option("--images", type=click.Path(path_type=Path), required=True, help="Folder of (unlabelled) photos.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New shard set (soft labels).")
@click.option("--flip/--no-flip", default=True, show_default=True, help="Horizontal-flip test-time augmentation.")
@click.option("--teacher-shards", type=click.Path(path_type=Path), default=None,
              help="The teacher's `synthesize --from-images` shards of the same photos, mixed in by --teacher-weight.")
@click.option("--teacher-weight", type=FiniteRange(0, 1), default=0.0, show_default=True)
@WEIGHTS_OPTION
@device_option
def pseudo_label_cmd(checkpoint: Path, images: Path, out: Path, flip: bool, teacher_shards: Path | None,
                     teacher_weight: float, weights: str | None, device: str):
    """Round 2: relabel photos with a trained student (soft labels in shards) for a fresh student to distil."""
    from labelgen.student.pseudo_label import pseudo_label_folder

    model, config, weights_path, dev = _load(checkpoint, weights, device)
    n = pseudo_label_folder(model, config, images, out, f"{checkpoint.name} ({weights_path.name})", flip,
                            teacher_shards, teacher_weight, device=dev)
    click.echo(f"relabelled {n} photos -> {out}")


@cli.command("export")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True, help="Student run folder.")
@click.option("--onnx", "onnx_path", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@click.option("--opset", type=click.IntRange(MIN_OPSET, MAX_OPSET), default=17,
              help="ONNX opset (the range this torch's exporter writes).")
@click.option("--tolerance", type=NON_NEGATIVE, default=1e-3,
              help="Largest accepted |onnxruntime - PyTorch| on the logits (over it: refused, nothing written).")
@WEIGHTS_OPTION
def export_cmd(checkpoint: Path, onnx_path: Path, opset: int, tolerance: float, weights: str | None):
    """Export to ONNX (uint8 RGB [batch, height, width, 3] in, any size; logits out; class names, colours and
    training size in the metadata) and verify with onnxruntime against PyTorch at several sizes."""
    from labelgen.student.onnx_export import export_onnx

    model, config, weights_path, _ = _load(checkpoint, weights)  # exported from the CPU
    diff = export_onnx(model, config, onnx_path, opset, tolerance=tolerance)
    click.echo(f"wrote {onnx_path}; onnxruntime vs PyTorch max abs diff: {diff:.3g}")


with_quiet(cli)


def main(argv: list[str] | None = None) -> None:
    run_click(cli, argv)


if __name__ == "__main__":
    main()

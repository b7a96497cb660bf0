"""Teacher commands: ``labelgen init | sample | import | train-heads | tune-features | synthesize | features``.

Every command takes ``-w/--workspace`` (default: $LABELGEN_WORKSPACE, else the current folder).
Registered on the main group in labelgen/cli.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from labelgen.cli_defaults import defaults_of
from labelgen.cli_types import FINITE, POSITIVE, FiniteRange, IntList, NameList, device_option, heads_option, parse_heads
from labelgen.errors import LabelgenError, notice
from labelgen.feature_selection import SweepConfig
from labelgen.generators import BACKENDS
from labelgen.heads import HEADS, default_ensemble
from labelgen.heads.train import AUGMENTS, TrainConfig
from labelgen.inversion import INVERTERS, InversionConfig
from labelgen.student.features import FeaturesConfig
from labelgen.synthesis.synthesize import SOFT_LABELS, TTA_MODES, SynthesisConfig, sampling_options
from labelgen.workspace import WorkspaceConfig

# each option's default is stated once, in the dataclass the command fills
WORKSPACE = defaults_of(WorkspaceConfig)
HEAD_TRAINING = defaults_of(TrainConfig)
SYNTHESIS = defaults_of(SynthesisConfig)
FEATURES = defaults_of(FeaturesConfig)
SWEEP = defaults_of(SweepConfig)
INVERSION = defaults_of(InversionConfig)


def _backend(value: str) -> str:
    """A built-in name, an installed plug-in or an opted-in module:Class (labelgen.generators.resolve_backend)."""
    from labelgen.generators import resolve_backend

    try:
        resolve_backend(value)
    except LabelgenError as e:
        raise LabelgenError(f"--generator: {e}") from None
    return value


workspace_option = click.option(
    "-w", "--workspace", "workspace_dir", type=click.Path(path_type=Path), default=None,
    help="Workspace folder [default: $LABELGEN_WORKSPACE or the current folder].")


def sampling_flags(fn):
    """--class / --truncation (GANs), --ddim-steps (diffusion): how new images are sampled. Unset = the workspace's
    generator options. A sampling option the backend does not take is refused in one line."""
    fn = click.option("--ddim-steps", type=click.IntRange(1), default=None,
                      help="DDIM steps of new samples (diffusion teachers; sampling only, the heads stay valid) "
                           "[default: the workspace's, else the backend's].")(fn)
    fn = click.option("--truncation", type=FINITE, default=None,
                      help="Truncation (stylegan2: psi towards the mean W; dcgan: z scale; biggan: of z and the "
                           "batch-norm statistics) [default: the workspace's, else the backend's].")(fn)
    return click.option("--class", "class_idx", type=click.IntRange(0), default=None,
                        help="Class index of a conditional StyleGAN2 or BigGAN [default: the workspace's, else the "
                             "backend's].")(fn)


def select_heads(ws, heads: str | None) -> None:
    """``--heads``: the trained head types this run's teacher ensembles, over workspace.json's "heads" (in memory
    only); checked now (one line when one is not trained)."""
    if heads is not None:
        ws.config.heads = parse_heads(heads)
        ws.selected_heads()


def _open(workspace_dir: Path | None):
    from labelgen.workspace import Workspace, default_workspace_path

    return Workspace(workspace_dir or default_workspace_path())


def _open_or_default(workspace_dir: Path | None):
    """The workspace named by -w / $LABELGEN_WORKSPACE / the current folder; with none of those (no -w, no
    $LABELGEN_WORKSPACE, the current folder not a workspace) the embedded default teacher, said in one line.
    Used by commands that only read the workspace (synthesize)."""
    from labelgen.workspace import CONFIG_NAME, WORKSPACE_ENV, Workspace

    if workspace_dir is not None or os.environ.get(WORKSPACE_ENV) or (Path.cwd() / CONFIG_NAME).is_file():
        return _open(workspace_dir)
    from labelgen.default_teacher import DEFAULT_WORKSPACE_DIR, default_teacher_available

    if not default_teacher_available():
        return _open(workspace_dir)  # the usual "not a labelgen workspace" error
    workspace = Workspace(DEFAULT_WORKSPACE_DIR)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"teacher: the embedded default ({workspace.config.backend} generator trained on CCP, "
                   f"{workspace.config.head.get('type')} heads, classes {', '.join(workspace.classes.names)}); "
                   "use -w WORKSPACE for your own", err=True)
    return workspace


def _generator_to(ws, device: str) -> str:
    """Move the workspace's generator to ``device`` (--device: auto = the GPU when there is one); returns it."""
    from labelgen.run import pick_device

    dev = str(pick_device(device))
    ws.generator().to(dev)
    return dev


def generator_options(command):
    """init's backend-specific options (adm: --preset, --model-flags, --share-noise; biggan: --z-sampler); --class /
    --truncation: sampling_flags."""
    from labelgen.generators.adm import ADM_PRESETS
    from labelgen.generators.biggan import Z_SAMPLERS

    for option in reversed([
        click.option("--preset", type=click.Choice(list(ADM_PRESETS)), default=None,
                     help="adm: the published model flags of a guided-diffusion checkpoint (lsun-256: "
                          "lsun_bedroom/cat/horse.pt; ffhq-256: DDPM-seg's ffhq.pt; imagenet-256-uncond)."),
        click.option("--model-flags", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="adm: JSON/YAML of guided-diffusion model flags (over --preset) [default: "
                          "<checkpoint stem>.json/.yaml beside the checkpoint]."),
        click.option("--share-noise", is_flag=True, default=None,
                     help="adm: one noise tensor for all feature timesteps (DDPM-seg's share_noise) [default: one "
                          "per timestep]."),
        click.option("--z-sampler", type=click.Choice(list(Z_SAMPLERS)), default=None,
                     help="biggan: how a seed becomes z (port: pytorch-pretrained-BigGAN's truncated_noise_sample, "
                          "so a seed gives the port's sample) [default: torch]."),
    ]):
        command = option(command)
    return command


def generator_options_of(preset=None, model_flags=None, z_sampler=None, share_noise=None) -> dict:
    """The workspace's generator_options from init's backend options (only those given)."""
    from labelgen.generators.adm import read_flags_file

    options = {"preset": preset, "flags": None if model_flags is None else read_flags_file(model_flags),
               "z_sampler": z_sampler, "share_noise": share_noise or None}
    return {k: v for k, v in options.items() if v is not None}


@click.command("init")
@click.argument("workspace_arg", required=False, type=click.Path(path_type=Path))
@workspace_option
@click.option("--generator", "backend", type=str, required=True,
              help=f"Generator backend: {', '.join(BACKENDS)}, an installed 'labelgen.generators' "
                   "entry point, or module:Class of a module listed in $LABELGEN_PLUGINS.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Generator checkpoint (.pkl, diffusers folder, state dict); dcgan: default = installed weights.")
@click.option("--classes", "class_names", type=NameList(min_count=2), required=True,
              help="Comma-separated class names, e.g. bg,hair,skin.")
@click.option("--head", "head_type", type=click.Choice(list(HEADS)), default=WORKSPACE["head"]["type"],
              show_default=True, help="Task head: DatasetGAN pixel-MLP ensemble or DreamTeacher conv interpreter.")
@click.option("--ensemble", type=click.IntRange(1, 32), default=None,
              help="Head ensemble members K [default: " + ", ".join(f"{default_ensemble(h)} for {h}" for h in HEADS)
                   + "].")
@click.option("--timesteps", type=IntList(), default=",".join(map(str, WORKSPACE["timesteps"])), show_default=True,
              help="Diffusion feature timesteps.")
@click.option("--feature-layers", type=IntList(), default=None,
              help="Comma-separated generator feature levels the head uses [default: all; adm 256x256: "
                   "DDPM-seg's output blocks 5,6,7,8,12].")
@generator_options
@sampling_flags
def init_cmd(workspace_arg, workspace_dir, backend, checkpoint, class_names, head_type, ensemble, timesteps,
             feature_layers, preset, model_flags, share_noise, z_sampler, class_idx, truncation, ddim_steps):
    """Create a workspace W: load the generator once (a bad checkpoint is refused, nothing created)."""
    from labelgen.workspace import create_workspace, default_workspace_path

    root = workspace_arg or workspace_dir or default_workspace_path()
    head = {"type": head_type, "ensemble": ensemble or default_ensemble(head_type)}
    ws = create_workspace(root, _backend(backend), class_names, checkpoint, head, timesteps, feature_layers,
                          generator_options={**generator_options_of(preset, model_flags, z_sampler, share_noise),
                                             **sampling_options(class_idx, truncation, ddim_steps)})
    h, w = ws.resolution
    click.echo(f"workspace {ws.root}: {backend} generator at {h}x{w}, {len(ws.config.feature_channels)} feature "
               f"levels (channels {ws.config.feature_channels}), head {head_type} x{head['ensemble']}, "
               f"classes {', '.join(class_names)}")


@click.command("sample")
@workspace_option
@click.option("--n", "count", type=click.IntRange(1), required=True, help="Images to generate for annotation.")
@click.option("--seed", "--seed-start", "seed_start", type=int, default=None,
              help="First seed: sample k uses seed + k [default: after the largest seed used].")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@sampling_flags
@device_option
def sample_cmd(workspace_dir, count, seed_start, batch_size, class_idx, truncation, ddim_steps, device):
    """Generate N images to annotate: W/annotations/<id>.png + <id>.json (mask <id>.mask.png comes later)."""
    ws = _open(workspace_dir)
    _generator_to(ws, device)
    ids = ws.sample_annotations(count, seed_start, batch_size, **sampling_options(class_idx, truncation, ddim_steps))
    click.echo(f"added {len(ids)} images to annotate ({ids[0]}..{ids[-1]}) in {ws.annotations_dir}; draw masks as "
               f"<id>.mask.png (index or class-colour PNG, 255 = ignore)")


@click.command("import")
@workspace_option
@click.option("--images", "images_dir", type=click.Path(path_type=Path), required=True, help="Folder of real images.")
@click.option("--masks", "masks_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of masks <stem>.png / <stem>.mask.png (index or class-colour PNGs).")
@click.option("--steps", type=click.IntRange(1), default=INVERSION["steps"], show_default=True,
              help=f"GAN teachers ({', '.join(INVERTERS)}): latent optimisation steps per image.")
@device_option
def import_cmd(workspace_dir, images_dir, masks_dir, steps, device):
    """Add real images (+ masks) to annotate. Diffusion teachers compute features of the photo; GAN teachers
    (dcgan, stylegan2) project it into their latent space first (reconstruction PSNR printed per image).
    All or nothing (a bad file imports none); images already imported (same content) are skipped."""
    from labelgen.inversion import mean_psnr

    ws = _open(workspace_dir)
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise LabelgenError(f"{masks_dir}: masks folder not found")
    if not ws.config.can_encode_images:
        _generator_to(ws, device)
    ids, resized, skipped = ws.import_images(images_dir, masks_dir, InversionConfig(steps=steps))
    with_masks = sum(ws.mask_path(i).is_file() for i in ids)
    inverted = [(i, ws.read_annotation(i)[1]) for i in ids]
    inverted = [(i, r) for i, r in inverted if isinstance(r.get("inversion"), dict)]
    for annotation_id, recipe in inverted:
        click.echo(f"{annotation_id} ({recipe.get('file')}): reconstruction PSNR {recipe['inversion']['psnr']:.2f} dB")
    if inverted:
        click.echo(f"inverted {len(inverted)} images into the {ws.config.backend} latent space ({steps} steps): mean "
                   f"PSNR {mean_psnr([r['inversion']['psnr'] for _, r in inverted]):.2f} dB")
    h, w = ws.resolution
    click.echo(f"imported {len(ids)} images ({with_masks} with masks)"
               + (f"; resized {resized} to the generator resolution {h}x{w} (images: area, masks: nearest)"
                  if resized else "")
               + (f"; skipped {skipped} already in the workspace (same file content)" if skipped else ""))


@click.command("train-heads")
@workspace_option
@click.option("--epochs", type=click.IntRange(1), default=HEAD_TRAINING["epochs"], show_default=True)
@click.option("--val", "val_folder", type=click.Path(path_type=Path), default=None,
              help="Real images + masks (project folder format) to print mIoU per epoch (diffusion teachers).")
@click.option("--images-per-step", type=click.IntRange(1), default=HEAD_TRAINING["images_per_step"], show_default=True)
@click.option("--pixels-per-image", type=click.IntRange(1), default=HEAD_TRAINING["pixels_per_image"], show_default=True,
              help="pixel-mlp: labelled pixels sampled per image per member per step.")
@click.option("--lr", type=POSITIVE, default=HEAD_TRAINING["lr"], show_default=True)
@click.option("--seed", type=int, default=HEAD_TRAINING["seed"], show_default=True)
@click.option("--class-balance", type=FiniteRange(0, 2), default=HEAD_TRAINING["class_balance"], show_default=True,
              help="Weight each class's loss by its pixel share in the annotations^-P (0 = off, 0.5 = 1/sqrt).")
@click.option("--augment", type=click.Choice(AUGMENTS), default=HEAD_TRAINING["augment"], show_default=True,
              help="flip: also train on each annotation's mirror image (its features computed from the mirrored "
                   "pixels); auto: flip for teachers that compute features of images (diffusion), else none.")
@click.option("--holdout", type=click.IntRange(0), default=0, show_default=True,
              help="Hold out the last K annotated images: not trained on, per-class IoU printed and written to "
                   "W/heads/train_log.json; a warning when the pixel baseline (the same heads on the photos' own "
                   "pixels) scores higher on them.")
@click.option("--type", "head_type", type=click.Choice(list(HEADS)), default=None,
              help="Train this head type instead of the workspace's: saved to W/heads/<type>/, and the teacher "
                   "ensembles it with W/heads/ [default: the workspace's head type, W/heads/].")
@device_option
def train_heads_cmd(workspace_dir, epochs, val_folder, images_per_step, pixels_per_image, lr, seed, class_balance,
                    augment, holdout, head_type, device):
    """Train the workspace's task head on its annotated images; saves W/heads/ (+ train_log.json)
    (--type: a second head type, W/heads/<type>/)."""
    from labelgen.heads.train import train_heads

    ws = _open(workspace_dir)
    config = TrainConfig(epochs=epochs, images_per_step=images_per_step, pixels_per_image=pixels_per_image, lr=lr,
                         seed=seed, class_balance=class_balance, augment=augment)
    device = _generator_to(ws, device)
    folder, head = ws.head_settings(head_type)
    result = train_heads(ws.teacher(head=False), ws, config, folder, head, val_folder, device=device, log=click.echo,
                         holdout=holdout, store=ws.feature_store)
    msg = f"trained {head_type or ws.head_type} head on {len(ws.annotated_ids()) - holdout} annotated images " \
          f"({result.steps} steps, final loss {result.losses[-1]:.4f})"
    if result.val_miou:
        msg += f", val mIoU {result.val_miou[-1]:.4f}"
    warning = None
    if result.holdout is not None:  # what the generator's features add: the same heads on the photos' own pixels
        from labelgen.quality import below_baseline, holdout_baseline

        baseline = holdout_baseline(ws.teacher(head=False), ws, config, head, holdout, device).miou
        msg += f", held-out mIoU {result.holdout.miou:.4f} on {holdout} image(s) (pixel baseline {baseline:.4f})"
        warning = below_baseline(result.holdout.miou, baseline)
    click.echo(msg + f" -> {ws.head_dir(head_type)}")
    if warning:
        notice(warning)
    if len(ws.trained_heads()) > 1:
        click.echo(f"the teacher ensembles the heads {', '.join(ws.selected_heads())} (workspace.json \"heads\" "
                   "selects; synthesize --heads for one run)")


@click.command("synthesize")
@workspace_option
@click.option("--n", "count", type=click.IntRange(1), default=None,
              help="Samples to keep (required unless --from-images: then at most this many images).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Shard folder.")
@click.option("--batch-size", type=click.IntRange(1), default=SYNTHESIS["batch_size"], show_default=True)
@click.option("--drop-uncertain", type=FiniteRange(0, 1, max_open=True), default=SYNTHESIS["drop_uncertain"],
              show_default=True,
              help="Drop this fraction of the most uncertain samples (over-generates per shard).")
@click.option("--shard-size", type=click.IntRange(1), default=SYNTHESIS["shard_size"], show_default=True,
              help="Kept samples per shard.")
@click.option("--from-images", type=click.Path(path_type=Path), default=None,
              help="Pseudo-label these real images instead of sampling (diffusion teachers).")
@click.option("--soft-labels", type=click.Choice(SOFT_LABELS), default=SYNTHESIS["soft_labels"], show_default=True,
              help="Also store uint8-quantised class probabilities as <key>.soft.npz.")
@click.option("--seed", "--seed-base", "seed_base", type=int, default=SYNTHESIS["seed_base"], show_default=True,
              help="Sample k uses seed + k (--seed-base: the same).")
@click.option("--tta", type=click.Choice(TTA_MODES), default=SYNTHESIS["tta"], show_default=True,
              help="Horizontal-flip test-time augmentation (image-encoding teachers): for --from-images photos "
                   "(real), for every image (all), or none.")
@click.option("--encode-workers", type=click.IntRange(0), default=SYNTHESIS["encode_workers"], show_default=True,
              help="Threads encoding PNG/npz (0 = in the labelling thread); default: this machine's CPUs - 1.")
@click.option("--overlap/--no-overlap", default=SYNTHESIS["overlap"],
              help="Label batch k in a background thread while batch k+1 samples (same shards either way); "
                   "default: on with a GPU, off on a CPU (the two would share its cores).")
@heads_option
@sampling_flags
@device_option
def synthesize_cmd(workspace_dir, count, out_dir, batch_size, drop_uncertain, shard_size, from_images, soft_labels,
                   seed_base, tta, encode_workers, overlap, class_idx, truncation, ddim_steps, heads,
                   device):
    """Label generated (or given real) images with the trained head into resumable WebDataset shards
    (without -w, $LABELGEN_WORKSPACE or a workspace in the current folder: the embedded default teacher).

    Multi-worker: torchrun --nproc-per-node K -m labelgen.cli -- synthesize ... (shard i -> rank i % K;
    the "--" stops torchrun from reading --n as one of its own options)."""
    from labelgen.synthesis import synthesize

    if count is None and from_images is None:
        raise LabelgenError("--n is required (or --from-images DIR)")
    ws = _open_or_default(workspace_dir)
    select_heads(ws, heads)
    config = SynthesisConfig(n=count, shard_size=shard_size, batch_size=batch_size, drop_uncertain=drop_uncertain,
                             seed_base=seed_base, soft_labels=soft_labels,
                             from_images=None if from_images is None else str(from_images),
                             encode_workers=encode_workers, overlap=overlap, tta=tta, class_idx=class_idx, truncation=truncation,
                             ddim_steps=ddim_steps, device=device)
    summary = synthesize(ws.teacher(), config, out_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        disk = summary.bytes
        click.echo(f"kept {summary.kept} samples, dropped {summary.dropped} (most uncertain), {summary.shards} shards "
                   f"({summary.shards_written} written now) in {summary.seconds:.1f} s, "
                   f"{summary.samples_per_second:.1f} samples/s, {disk / 2**20:.1f} MiB on disk -> {out_dir}")


@click.command("features")
@workspace_option
@click.option("--data", type=click.Path(path_type=Path), required=True, multiple=True,
              help="What `student train --data` will read: shard sets and labelled folders (repeat for several).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Features folder (resumed if a run into it was stopped); give it to `student train --features`.")
@click.option("--shard-size", type=click.IntRange(1), default=FEATURES["shard_size"], show_default=True,
              help="Images per shard.")
@click.option("--batch-size", type=click.IntRange(1), default=FEATURES["batch_size"], show_default=True,
              help="Images per teacher forward.")
@device_option
def features_cmd(workspace_dir, data, out_dir, shard_size, batch_size, device):
    """Store the teacher's features of every image of --data once (float16 shards keyed by the image's pixels), for
    `student train --mode feature-distill|dreamteacher --features OUT` to read instead of running the generator
    (without -w, $LABELGEN_WORKSPACE or a workspace in the current folder: the embedded default teacher)."""
    from labelgen.student.features import write_features

    ws = _open_or_default(workspace_dir)
    teacher = ws.teacher(head=False, device=_generator_to(ws, device))
    config = FeaturesConfig(data=[str(d) for d in data], shard_size=shard_size, batch_size=batch_size)
    summary = write_features(teacher, config, out_dir, log=click.echo)
    click.echo(f"stored features of {summary.images} images, {summary.shards} shards ({summary.shards_written} "
               f"written now) in {summary.seconds:.1f} s, {summary.bytes / 2**20:.1f} MiB on disk -> {out_dir}")


@click.command("tune-features")
@workspace_option
@click.option("--val", "val_folder", type=click.Path(path_type=Path), default=None,
              help="Real images + masks (project folder format) to score on [default: k-fold over the annotations].")
@click.option("--timesteps", type=IntList(), default=",".join(map(str, SWEEP["timesteps"])), show_default=True,
              help="Candidate diffusion timesteps.")
@click.option("--max-timesteps", type=click.IntRange(1), default=SWEEP["max_timesteps"], show_default=True)
@click.option("--folds", type=click.IntRange(2), default=SWEEP["folds"], show_default=True,
              help="k of the k-fold cross-validation over the annotations (without --val).")
@click.option("--epochs", type=click.IntRange(1), default=SWEEP["epochs"], show_default=True,
              help="Head training epochs per candidate.")
@click.option("--class-balance", type=FiniteRange(0, 2), default=SWEEP["class_balance"], show_default=True)
@click.option("--seed", type=int, default=SWEEP["seed"], show_default=True)
@click.option("--apply/--no-apply", default=True, show_default=True,
              help="Store the best choice in workspace.json (then train the heads again).")
@device_option
def tune_features_cmd(workspace_dir, val_folder, timesteps, max_timesteps, folds, epochs, class_balance, seed, apply, device):
    """Choose the feature levels (diffusion timesteps x decoder blocks; GAN synthesis blocks) on validation:
    a sweep scored by the mIoU of the workspace's head type; table in W/feature_sweep.json."""
    from labelgen.feature_selection import SWEEP_NAME, SweepConfig, tune_features

    ws = _open(workspace_dir)
    if val_folder is not None and not Path(val_folder).is_dir():
        raise LabelgenError(f"--val {val_folder}: not a folder")
    config = SweepConfig(timesteps=tuple(timesteps or ()), max_timesteps=max_timesteps,
                         folds=folds, epochs=epochs, class_balance=class_balance, seed=seed)
    _generator_to(ws, device)
    with ws.writing():  # refused now, not after the sweep, when another labelgen process writes into W
        report = tune_features(ws.teacher(head=False), ws, val_folder, config, ws.head_settings()[1], log=click.echo)
        report = ws.keep_feature_sweep(report, apply)
    best = report["best"]
    chosen = (f"timesteps {best['timesteps']}, " if best["timesteps"] else "") + f"blocks {best['blocks']}"
    click.echo(f"chose {chosen}: mIoU {best['miou']:.4f} ({report['scored_on']}; was {report['before']['miou']:.4f}) "
               f"-> {ws.root / SWEEP_NAME}"
               + ("; stored in workspace.json: run `labelgen train-heads` next" if report["applied"] else ""))


TEACHER_COMMANDS = [init_cmd, sample_cmd, import_cmd, train_heads_cmd, tune_features_cmd, synthesize_cmd, features_cmd]

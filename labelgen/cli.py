"""``labelgen``: the teacher's command line (data import, workspace, heads, synthesis, app).

Every user-facing failure raises :class:`labelgen.errors.LabelgenError`; :func:`run_click` (the error
boundary of both CLIs) turns it into one line on stderr (``error: ...``) and exit status 2; ``--debug``
or LABELGEN_DEBUG=1 adds tracebacks.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import click

from labelgen.data.coco import UNLABELLED_CHOICES
from labelgen.data.export import EXPORT_FORMATS
from labelgen.data.formats import AUTO, IMPORT_FORMATS
from labelgen.errors import LabelgenError, notice, one_line
from labelgen.run import QUIET_ENV  # =1: no progress bars (labelgen.run.progress; also set by --quiet)


def parse_size(text: str, option: str | None = None) -> tuple[int, int]:
    """'96x64' -> (96, 64) as (H, W); bounded by labelgen.imaging.size_problem. ``option``: the option
    the text came from (named in the error)."""
    from labelgen.imaging import size_problem

    try:
        h, w = (int(v) for v in text.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected HxW, e.g. 96x64", param_hint=option) from None
    problem = size_problem((h, w))
    if problem:
        raise click.BadParameter(f"{text!r}: {problem}", param_hint=option)
    return h, w


def format_size(size: tuple[int, int]) -> str:
    """(96, 64) -> '96x64' (the inverse of :func:`parse_size`)."""
    return "x".join(str(v) for v in size)


DEBUG_ENV = "LABELGEN_DEBUG"  # =1: tracebacks of errors (also set by --debug)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[DEBUG_ENV] = "1"  # also reaches worker processes (DataLoader, torchrun children)


debug_option = click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                            help=f"Show the traceback of an error (or set {DEBUG_ENV}=1).")


def _set_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[QUIET_ENV] = "1"  # also reaches worker processes (DataLoader, torchrun children)


def with_quiet(group: click.Group) -> click.Group:
    """``--quiet`` (no progress bar) on every command of ``group`` that does not declare its own: one option name
    with one meaning on every command."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            with_quiet(command)
        elif not any(isinstance(p, click.Option) and "--quiet" in p.opts for p in command.params):
            command.params.append(click.Option(["--quiet"], is_flag=True, expose_value=False, is_eager=True,
                                               callback=_set_quiet, help=f"No progress bar (or set {QUIET_ENV}=1)."))
    return group


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="labelgen")
@debug_option
def cli():
    """labelgen: a generator + a few annotated images -> a labelled synthetic dataset -> a student."""


@cli.group()
def data():
    """Import, export and inspect datasets (COCO, Cityscapes, Label Studio, VOC/CVAT, folders, CCP, shards)."""


@data.command("import-ccp")
@click.option("--src", type=click.Path(path_type=Path), required=True, help="CCP in its published layout.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="New folder to write.")
@click.option("--size", "size", type=str, default="96x64", help="Output size HxW.")
@click.option("--splits", type=str, default="all", help="Comma-separated split names, or 'all'.")
@click.option("--workers", type=int, default=0, help="Processes (0 = one per core).")
@click.option("--limit", type=int, default=0, help="Only the first N photos of each split (0 = all).")
def import_ccp_cmd(src: Path, out: Path, size: str, splits: str, workers: int, limit: int):
    """Write a benchmark-ready CCP-8 copy (images, index masks, classes.json) at a chosen size (images and
    masks resized by the project's one rule, labelgen/imaging.py)."""
    from labelgen.data.ccp import SPLITS, import_ccp
    from labelgen.run import progress

    size_hw = parse_size(size, "--size")
    chosen = tuple(SPLITS) if splits == "all" else tuple(s.strip() for s in splits.split(","))
    total = len({pid for s in chosen if s in SPLITS for pid in SPLITS[s][:limit or None]})
    with progress(total, desc="import CCP", unit="photo") as bar:
        summary = import_ccp(src, out, size_hw, chosen, workers or None,
                             progress=lambda: bar.update(1), limit=limit or None)
    click.echo(f"wrote {summary['photos']} photos into {len(chosen)} splits at {size_hw[0]}x{size_hw[1]} "
               f"in {summary['seconds']:.1f} s -> {out}")


@data.command("import")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice([AUTO, *IMPORT_FORMATS]), default=AUTO, help="SRC's format (auto: recognised by its layout). Which fields are read: docs/data.md.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Project folder to write (OUT/classes.json, OUT/<split>/images, masks); may already hold other splits.")
@click.option("--split", default="train", help="Split read from SRC (VOC list, Cityscapes folder) and written to OUT/<split>.")
@click.option("--size", "size", type=str, default=None, help="Resize to HxW (images: area/bicubic, masks: nearest) "
              "[default: keep each image's size].")
@click.option("--classes", "mapping", type=str, default=None,
              help="Source class -> project class: 'person=person,car=vehicle,truck=vehicle,*=ignore' or a file of "
                   "such entries [default: keep SRC's classes].")
@click.option("--unlabelled", type=click.Choice(UNLABELLED_CHOICES), default=UNLABELLED_CHOICES[0],
              help="COCO / Label Studio pixels no annotation covers: the background class or 255 (ignore).")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="COCO / Label Studio: the folder SRC's images are in when not beside it (COCO file_name, Label "
                   "Studio upload URLs by file name, local-files ?d= paths relative to it) [default: beside SRC].")
def data_import_cmd(src: Path, fmt: str, out: Path, split: str, size: str | None, mapping: str | None, unlabelled: str,
                    images: Path | None):
    """Import COCO, Cityscapes, Label Studio, VOC/CVAT or a labelled folder into the project folder format."""
    from labelgen.data.formats import import_dataset
    from labelgen.data.mapping import ClassMapping

    summary = import_dataset(src, out, fmt, split, parse_size(size) if size else None,
                             ClassMapping.parse(mapping) if mapping else None, unlabelled, images=images)
    skipped = "".join(f", {v} {k.replace('_', ' ')}" for k, v in summary.items() if k.startswith("skipped"))
    click.echo(f"imported {summary['images']} images ({summary['format']}{skipped}) -> {out / split}; "
               f"classes: {', '.join(summary['classes'])}")


@data.command("export")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), required=True,
              help="coco: images/ + annotations.json (RLE); voc: JPEGImages/ + SegmentationClass/ + labelmap.txt; "
                   "folder: the project format.")
@click.option("--split", default=None, help="Split name written (VOC ImageSets list, folder OUT/<split>) "
              "[default: SRC's own: val for DIR/val or ImageSets/Segmentation/val.txt, else train].")
def data_export_cmd(src: Path, out: Path, fmt: str, split: str | None):
    """Export a shard set (synthesis output), a workspace's annotations or a labelled folder to OUT."""
    from labelgen.data.export import export_dataset

    summary = export_dataset(src, out, fmt, split)
    skipped = f" ({summary['skipped_unlabelled']} unlabelled skipped)" if summary["skipped_unlabelled"] else ""
    click.echo(f"exported {summary['samples']} samples{skipped} as {fmt} (split {summary['split']}) -> {out}")


@data.command("info")
@click.argument("path", type=click.Path(path_type=Path))
def data_info(path: Path):
    """Describe a labelled folder or a shard set (counts, classes; for shards: complete or how far)."""
    from labelgen.data.folder import open_labelled
    from labelgen.data.shards import is_shard_set, shard_set_status
    from labelgen.synthesis.synthesize import PLAN_NAME

    if path.is_dir() and (is_shard_set(path) or (path / PLAN_NAME).is_file()):  # started, maybe no shard yet
        click.echo(shard_set_status(path, _planned_shards(path)).describe())
        return
    from labelgen.data.folder import pixel_statistics

    folder = open_labelled(path)
    click.echo(f"folder {path}: {len(folder)} images, {folder.labelled_count} with masks, "
               f"classes: {', '.join(folder.classes.names)}")
    lines, warnings = pixel_statistics(folder)
    for line in lines:
        click.echo(line)
    for line in warnings:
        notice(line)


def _planned_shards(path: Path) -> int | None:
    """How many shards ``labelgen synthesize`` planned for ``path`` (from the synthesis.json it wrote
    first), or None when unknown (no such file, or its --from-images folder is gone)."""
    from dataclasses import fields

    from labelgen.data.io import list_images, read_json
    from labelgen.synthesis.synthesize import PLAN_NAME, SynthesisConfig, plan_shards

    if not (path / PLAN_NAME).is_file():
        return None
    run = read_json(path / PLAN_NAME)
    try:
        config = SynthesisConfig(**{f.name: run[f.name] for f in fields(SynthesisConfig) if f.name in run})
        images = None if config.from_images is None else (
            len(run["images"]) if "images" in run else len(list_images(Path(config.from_images))))
        return len(plan_shards(config, images))
    except (LabelgenError, TypeError, ValueError):
        return None


# ---- the commands, in pipeline order (each defined beside the code it drives) ----
from labelgen.teacher_cli import TEACHER_COMMANDS  # noqa: E402  (init, sample, import, train-heads, synthesize)
from labelgen.training.cli import train_generator_cmd  # noqa: E402
from labelgen.app.cli import app_cmd  # noqa: E402
from labelgen.demo import demo_cmd  # noqa: E402

for _command in (*TEACHER_COMMANDS, train_generator_cmd, app_cmd, demo_cmd):
    cli.add_command(_command)
with_quiet(cli)


def error_line(error: LabelgenError) -> str:
    """The one-line message of ``error``. One raised in a DataLoader worker process arrives re-raised by
    torch as "Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\n<type>: <message>":
    its last line's message. Any other line breaks become spaces."""
    text = str(error)
    if "\nOriginal Traceback" in text:
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return one_line(text, limit=1000)


def _fail(message: str, code: int) -> None:
    if debug_enabled():
        traceback.print_exc()
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_click(group: click.Group, argv: list[str] | None = None) -> None:
    """Run a click group: the error boundary of both CLIs. Expected failures become one line
    ``error: ...`` on stderr and exit status 2: LabelgenError (what the library raises for bad input), a
    bad option value (click's usage errors) and the file system refusing a read or write (full,
    read-only, a file where a folder should be: OSError with an errno in labelgen.data.io.FS_ERRNOS).
    Anything else is a bug: one line saying so and exit status 1; with ``--debug`` or LABELGEN_DEBUG=1
    its traceback (and that of an expected failure) is shown too."""
    import warnings

    from labelgen.data.io import FS_ERRNOS

    quiet = os.environ.get(QUIET_ENV)
    try:
        with warnings.catch_warnings():
            if not debug_enabled():  # notices the library raises as warnings: one line, no source line
                warnings.formatwarning = _one_line_warning
            group.main(args=argv, standalone_mode=False)
    except LabelgenError as e:
        _fail(error_line(e), 2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # a bad option or argument (usage errors, exit 2): the message names it
        _fail(one_line(e.format_message()), e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:
        if e.errno not in FS_ERRNOS:
            raise_or_report(e)
        _fail(f"{f'{e.filename}: ' if e.filename else ''}{e.strerror or e}", 2)
    except Exception as e:  # noqa: BLE001  (reported as a bug, traceback with --debug)
        raise_or_report(e)
    finally:  # --quiet holds for this command (and its children) only
        if quiet is None:
            os.environ.pop(QUIET_ENV, None)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A Python warning at the command line (a notice such as a photo stretched to the teacher's aspect):
    ``warning: <message>`` on one line, as labelgen.errors.notice prints; the source line only with --debug."""
    return f"warning: {one_line(message, 1000)}\n"


def raise_or_report(error: Exception) -> None:
    """An unexpected exception (a bug): its traceback with --debug / LABELGEN_DEBUG=1, else one line
    asking for it; exit status 1 either way."""
    if debug_enabled():
        raise error
    click.echo(f"error: internal error {type(error).__name__}: {one_line(error, 200)} (a bug; rerun with --debug "
               f"or {DEBUG_ENV}=1 for the traceback)", err=True)
    sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    run_click(cli, argv)


if __name__ == "__main__":
    main()

"""``labelgen demo``: the main job on the embedded default teacher.

Copies the default workspace (labelgen/default_teacher) to OUT/workspace, synthesizes a small
labelled set into OUT/synthetic (WebDataset shards with soft labels, resumable), and writes
OUT/grid.png: each synthetic image beside its label overlay. Sized (16 DDIM-10 samples) to finish within
3 minutes on 2 CPU cores.
"""
from __future__ import annotations

from pathlib import Path

import click

from labelgen.cli_types import device_option


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo_out"), show_default=True,
              help="Output folder (workspace copy, shards, grid.png).")
@click.option("--n", "count", type=click.IntRange(1), default=16, show_default=True, help="Synthetic samples.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--ddim-steps", type=click.IntRange(1), default=10, show_default=True,
              help="DDIM steps of the demo's samples (diffusion teachers; sampling only, the heads stay valid).")
@click.option("-w", "--workspace", "workspace_dir", type=click.Path(path_type=Path), default=None,
              help="Use this workspace instead of the embedded default teacher.")
@device_option
def demo_cmd(out: Path, count: int, batch_size: int, ddim_steps: int, workspace_dir: Path | None, device: str):
    """Main job: synthesize a labelled set with the default teacher and write an overlay grid PNG."""
    from labelgen.data.io import write_png
    from labelgen.data.shards import ShardReader
    from labelgen.default_teacher import copy_default_workspace
    from labelgen.synthesis import SynthesisConfig, synthesize
    from labelgen.visualize import grid, overlay, upscale
    from labelgen.workspace import Workspace

    workspace = Workspace(workspace_dir) if workspace_dir else copy_default_workspace(out / "workspace")
    if workspace_dir is None and workspace.config.can_encode_images:  # the copy's sampling budget (minutes on CPU)
        workspace.config.generator_options["ddim_steps"] = ddim_steps
        workspace.save_config()
        workspace.reload()
    click.echo(f"teacher: {workspace.config.backend} generator, {workspace.config.head['type']} head, "
               f"classes {', '.join(workspace.classes.names)} (workspace {workspace.root})")
    config = SynthesisConfig(n=count, shard_size=count, batch_size=batch_size, soft_labels="uint8",
                             device=device)
    summary = synthesize(workspace.teacher(), config, out / "synthetic")
    click.echo(f"kept {summary.kept} samples ({summary.dropped} dropped) in {summary.seconds:.1f} s, "
               f"{summary.samples_per_second:.2f} samples/s, {summary.bytes / 2**20:.2f} MiB -> {out / 'synthetic'}")
    tiles = []
    for sample in list(ShardReader(out / "synthetic"))[:32]:
        tiles += [sample.image, overlay(sample.image, sample.mask, workspace.classes.palette, alpha=0.6)]
    picture = upscale(grid(tiles, cols=8), 2)
    write_png(out / "grid.png", picture)
    legend = ", ".join(f"{n}={c}" for n, c in zip(workspace.classes.names, workspace.classes.colours))
    click.echo(f"wrote {out / 'grid.png'} (image | labels, {len(tiles) // 2} samples; colours {legend})")

"""``student``: train, evaluate, predict with and export the student segmentation network."""
from __future__ import annotations

import click

from labelgen.cli import run_click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def cli():
    """student: a segmentation-models-pytorch network trained from the teacher's synthetic data."""


def main(argv: list[str] | None = None) -> None:
    run_click(cli, argv)

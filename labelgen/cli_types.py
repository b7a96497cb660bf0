"""Option types shared by the command lines."""
from __future__ import annotations

import math

import click


class FiniteRange(click.FloatRange):
    """click.FloatRange that also refuses nan and ±inf (``nan`` compares false with every bound, so a plain
    FloatRange lets it through: ``--lr nan`` would train on nothing)."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


POSITIVE = FiniteRange(min=0, min_open=True)  # a finite number > 0 (learning rates, temperatures)
NON_NEGATIVE = FiniteRange(min=0)  # a finite number >= 0 (loss weights)


def parse_heads(text: str | None) -> list[str] | None:
    """``--heads pixel-mlp,conv`` -> ["pixel-mlp", "conv"] (known head types; None when not given)."""
    from labelgen.errors import LabelgenError
    from labelgen.heads import HEADS

    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in HEADS]
    if unknown or not names:
        raise LabelgenError(f"--heads {text!r}: comma-separated head types ({', '.join(HEADS)})")
    return names


heads_option = click.option(
    "--heads", default=None, help="Comma-separated head types to ensemble, e.g. pixel-mlp,conv [default: "
                                  "workspace.json \"heads\", else every trained head: W/heads/ + W/heads/<type>/].")


DEVICES = ("auto", "cpu", "cuda")  # one meaning everywhere: auto = CUDA when present (labelgen.run.pick_device)

device_option = click.option(
    "--device", type=click.Choice(DEVICES), default="auto", show_default=True,
    help="Where the tensors are computed: auto = cuda when a GPU is visible, else cpu; cuda without a GPU is refused.")

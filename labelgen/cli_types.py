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


POSITIVE = FiniteRange(min=0, min_open=True)  # a finite number > 0 (learning rates, temperatures, minutes)
NON_NEGATIVE = FiniteRange(min=0)  # a finite number >= 0 (loss weights, tolerances)
FINITE = FiniteRange()  # any finite number (truncation: each backend checks its own range)


class IntList(click.ParamType):
    """Comma-separated integers, e.g. ``50,150,250`` -> [50, 150, 250]: each at least ``min``, none empty, none
    given twice (a level or timestep listed twice would only be computed twice); "" -> None (not given)."""

    name = "integers"

    def __init__(self, min: int = 0):
        self.min = min

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, list):
            return value
        text = str(value)
        if not text.strip():
            return None
        try:
            numbers = [int(v) for v in text.split(",")]
        except ValueError:
            self.fail(f"{text!r}: expected comma-separated integers, e.g. 50,150,250", param, ctx)
        small = [n for n in numbers if n < self.min]
        if small:
            self.fail(f"{text!r}: {small[0]} is below {self.min}", param, ctx)
        twice = sorted({n for n in numbers if numbers.count(n) > 1})
        if twice:
            self.fail(f"{text!r}: {twice[0]} is given twice", param, ctx)
        return numbers


class NameList(click.ParamType):
    """Comma-separated names, e.g. ``bg,hair,skin`` -> ["bg", "hair", "skin"] (spaces around each stripped): none
    empty (``a,,b``), none given twice, at least ``min_count`` of them."""

    name = "names"

    def __init__(self, min_count: int = 1):
        self.min_count = min_count

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        text = str(value)
        names = [v.strip() for v in text.split(",")]
        if "" in names:
            self.fail(f"{text!r}: an empty name (two commas in a row, or one at an end)", param, ctx)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            self.fail(f"{text!r}: {twice[0]!r} is given twice", param, ctx)
        if len(names) < self.min_count:
            self.fail(f"{text!r}: need at least {self.min_count} comma-separated names", param, ctx)
        return names


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



def device_choice(default: str | None = "auto"):
    """The one ``--device`` option. ``default`` None: the value is None unless given (a command that passes on only
    the options given, ``labelgen train-generator``, whose trainer's default is auto); --help shows auto either way."""
    return click.option(
        "--device", type=click.Choice(DEVICES), default=default, show_default=default is not None,
        help="Where the tensors are computed: auto = cuda when a GPU is visible, else cpu; cuda without a GPU is "
             "refused." + ("  [default: auto]" if default is None else ""))


device_option = device_choice()

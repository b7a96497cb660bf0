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

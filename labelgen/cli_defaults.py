"""Defaults stated once: a command's options take their defaults from the dataclass the command fills."""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


def defaults_of(cls) -> dict[str, Any]:
    """Field name -> default of a dataclass (fields without one are left out)."""
    out = {}
    for f in fields(cls):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out

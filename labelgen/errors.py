"""The one exception type the command line turns into a one-line message and a non-zero exit, and the one
way a command says what it assumed (:func:`notice`)."""
from __future__ import annotations

import sys


class LabelgenError(Exception):
    """A user-facing error: bad input, missing file, refused checkpoint. Message is one line."""


class DataError(LabelgenError):
    """Bad or missing data on disk (image, mask, classes file, dataset folder)."""


def one_line(text: str, limit: int = 300) -> str:
    """``text`` (e.g. a library's multi-line message) on one line, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def notice(message: str) -> None:
    """Tell the user, in one line on stderr (``warning: <message>``), what was assumed about their input: a
    notice, not a Python warning with a source line."""
    print(f"warning: {one_line(message, 1000)}", file=sys.stderr, flush=True)

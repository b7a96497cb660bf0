"""``--classes``: which source classes (COCO categories, Cityscapes train classes, Label Studio labels,
VOC/folder classes) become which project classes.

Syntax: comma-separated (or one per line, in a file whose path is given instead) entries
``SOURCE=TARGET`` or ``SOURCE`` (same name). ``TARGET`` may be ``ignore`` (pixels become 255). ``*``
stands for every source class not listed otherwise (``*=ignore``, ``*=background``). Without a
mapping the source classes are kept as they are. The target classes are numbered in the order of
their first appearance; a target named like a source class keeps that class's colour.

Every source class must be covered (listed or by ``*``) and every listed source must exist, so a typo
is an error rather than a silently dropped class.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from labelgen.data.classes import ClassList, default_colour
from labelgen.data.io import IGNORE_INDEX
from labelgen.errors import DataError

IGNORE_TARGET = "ignore"
WILDCARD = "*"


@dataclass(frozen=True)
class ClassMapping:
    entries: tuple[tuple[str, str], ...]  # (source name or '*', target name or 'ignore'), in order

    @classmethod
    def parse(cls, text: str) -> "ClassMapping":
        """From ``a=b,c,d=ignore`` or the path of a file holding such entries (commas or lines)."""
        if Path(text).is_file():
            text = Path(text).read_text()
        entries = []
        for raw in text.replace("\n", ",").split(","):
            item = raw.strip()
            if not item or item.startswith("#"):
                continue
            source, _, target = item.partition("=")
            source, target = source.strip(), (target.strip() or source.strip())
            if not source or not target:
                raise DataError(f"--classes: bad entry {item!r} (use SOURCE=TARGET, SOURCE, or *=ignore)")
            if source in {s for s, _ in entries}:
                raise DataError(f"--classes: {source!r} is listed twice")
            entries.append((source, target))
        if not entries:
            raise DataError("--classes: no entries")
        return cls(tuple(entries))

    def apply(self, source: ClassList, where: str) -> tuple[ClassList, np.ndarray]:
        """(target classes, lut uint8 [256]: source id -> target id, 255 -> 255)."""
        unknown = [s for s, _ in self.entries if s != WILDCARD and s not in source.names]
        if unknown:
            raise DataError(f"--classes: {unknown[0]!r} is not a class of {where} (its classes: "
                            f"{', '.join(source.names)})")
        explicit = dict(self.entries)
        rest = explicit.get(WILDCARD)
        uncovered = [n for n in source.names if n not in explicit and rest is None]
        if uncovered:
            raise DataError(f"--classes: class {uncovered[0]!r} of {where} is not mapped (add {uncovered[0]}=NAME, "
                            f"{uncovered[0]}=ignore, or *=ignore)")
        targets: list[str] = []
        for _, target in self.entries:
            if target != IGNORE_TARGET and target not in targets:
                targets.append(target)
        colour_of = dict(zip(source.names, source.colours))
        colours = tuple(colour_of.get(t, default_colour(i)) for i, t in enumerate(targets))
        if not targets:
            raise DataError("--classes: every class maps to ignore")
        target_classes = ClassList(tuple(targets), colours)
        lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for source_id, name in enumerate(source.names):
            target = explicit.get(name, rest)
            if target != IGNORE_TARGET:
                lut[source_id] = targets.index(target)
        return target_classes, lut

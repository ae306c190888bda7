"""The order of a video's frames is the order of their file names (as in the official code): training's index and
evaluation both sort by name. Numbered names must therefore be zero-padded to one width: `1.jpg, 2.jpg, ...,
10.jpg` (ffmpeg's `%d.jpg`) would be read 1, 10, 11, ..., 2, a shuffled video. `misordered_numbering` finds that."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

_NUMBERED = re.compile(r"^(.*?)(\d+)$")  # <prefix><number>, the number as long as possible

FIX_NUMBERING = (
    "rename the video's frames (and their masks) with numbers zero-padded to one width (00002.jpg, 00010.jpg), "
    "e.g. extract them with ffmpeg's %05d.jpg: frames are read in name order"
)


def misordered_numbering(names: Iterable[str]) -> tuple[str, str] | None:
    """Two file names (a, b) of one video where `a` sorts before `b` by name but has the larger number (`10.jpg`
    before `2.jpg`), or None when name order is number order. Only names `<prefix><number>.<ext>` sharing one
    prefix are compared; other names (no number, several prefixes) have no numeric order to break."""
    parsed: list[tuple[str, int, str]] = []  # (prefix, number, name)
    for name in names:
        match = _NUMBERED.match(os.path.splitext(name)[0])
        if match is None:
            return None
        parsed.append((match.group(1), int(match.group(2)), name))
    if len({prefix for prefix, _, _ in parsed}) != 1:
        return None
    ordered = sorted(parsed, key=lambda t: os.path.splitext(t[2])[0])  # the readers' order: by stem
    for (_, na, a), (_, nb, b) in zip(ordered, ordered[1:], strict=False):
        if nb < na:
            return a, b
    return None

"""The one colour map: DAVIS / PASCAL VOC, the palette of every index PNG this project writes and every picture.

Colour of id i: bit k of each of i's three low-order bit groups lights bit 7-k of R, G and B.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _table() -> np.ndarray:
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for k in range(8):
            r |= ((c >> 0) & 1) << (7 - k)
            g |= ((c >> 1) & 1) << (7 - k)
            b |= ((c >> 2) & 1) << (7 - k)
            c >>= 3
        pal[i] = (r, g, b)
    pal.setflags(write=False)
    return pal


def davis_palette_array() -> np.ndarray:
    """256*3 uint8 (read-only)."""
    return _table()


def davis_palette() -> list[int]:
    """The same as a flat list of 768 ints, as PIL's `putpalette` takes it."""
    return _table().ravel().tolist()

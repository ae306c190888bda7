"""Small, deterministic file writers shared by the generator and the converters.

Every writer goes through a temporary file in the same directory and os.replace, so a killed process leaves either
the old file or the complete new one, never a half-written file under the final name.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

JPEG_QUALITY = 90  # fixed so the same pixels always give the same bytes


def davis_palette() -> list[int]:
    """The DAVIS / PASCAL VOC colour map as a flat list of 768 ints (index -> RGB).

    Colour of index i: bit k of each of its three low-order bit groups lights bit 7-k of R, G and B.
    """
    palette: list[int] = []
    for i in range(256):
        r = g = b = 0
        c = i
        for k in range(8):
            r |= ((c >> 0) & 1) << (7 - k)
            g |= ((c >> 1) & 1) << (7 - k)
            b |= ((c >> 2) & 1) << (7 - k)
            c >>= 3
        palette.extend((r, g, b))
    return palette


_PALETTE = davis_palette()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary sibling and os.replace (creates parent folders)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy a file byte-for-byte to `dst` atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: object, indent: int | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))


def encode_jpeg(rgb: np.ndarray) -> bytes:
    """H*W*3 uint8 RGB -> JPEG bytes (fixed quality, no metadata)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def encode_palette_png(ids: np.ndarray) -> bytes:
    """H*W uint8 object ids -> palette-mode PNG with the DAVIS palette (pixel value = object id)."""
    img = Image.fromarray(np.ascontiguousarray(ids, dtype=np.uint8))  # mode L
    img.putpalette(_PALETTE)  # L + palette -> mode P, pixel values unchanged
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def encode_gray_png(mask: np.ndarray) -> bytes:
    """H*W uint8 (0/255 for the static sets) -> grayscale PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()

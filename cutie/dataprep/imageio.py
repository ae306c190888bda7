"""Deterministic image encoders shared by the generator and the converters (files are written with
`cutie.utils.atomic`)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cutie.utils.palette import davis_palette

JPEG_QUALITY = 90  # fixed so the same pixels always give the same bytes


_PALETTE = davis_palette()


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

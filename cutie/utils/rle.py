"""COCO run-length encodings: decoding through pycocotools, and the checks pycocotools does not do.

pycocotools decodes an RLE whose runs do not add up to height*width without complaint (a short one is padded,
a long one truncated), so the converters and the SA-1B index (cutie/data/index/sa1b.py) check the run total first with
`rle_total`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from pycocotools import mask as mask_utils


class RLEError(ValueError):
    """A segmentation that is not a valid RLE/polygon for its frame size."""


def compressed_counts(counts: str) -> np.ndarray:
    """Run lengths of a COCO compressed counts string (pycocotools' LEB128-like text form). int64 array.

    Each run is a group of characters (value + 48): 5 payload bits each, bit 0x20 = more characters follow, bit
    0x10 of the last one = negative. From the fourth run on, a value is a difference to the run two places back.
    """
    try:
        raw = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError as e:
        raise RLEError("RLE counts string is not ASCII") from e
    if raw.size == 0:
        return np.zeros(0, dtype=np.int64)
    if raw.min() < 0 or raw.max() > 63:
        raise RLEError("RLE counts string has characters outside '0'..'o'")
    more = (raw & 0x20) != 0
    if more[-1]:
        raise RLEError("RLE counts string ends in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    group = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 5 * (np.arange(raw.size) - starts[group])  # 5 bits per character within its group
    if shift.max() > 55:
        raise RLEError("RLE counts string holds a number too large for a mask")
    values = np.add.reduceat((raw & 0x1F) << shift, starts)
    negative = (raw[ends] & 0x10) != 0
    values = values - np.where(negative, np.left_shift(1, shift[ends] + 5), 0)
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # odd runs: deltas chained from run 1
    runs[2::2] = np.cumsum(values[2::2])  # even runs from run 2 on: chained from run 2
    return runs


def rle_total(counts: str | list[int]) -> int:
    """Number of pixels an RLE covers (the sum of its runs); raises RLEError on negative runs."""
    runs = compressed_counts(counts) if isinstance(counts, str) else np.asarray(counts, dtype=np.int64)
    if runs.size and runs.min() < 0:
        raise RLEError("RLE has a negative run length")
    return int(runs.sum())


POLYGON_REACH = 10  # polygons may reach outside the frame (clipped), but not arbitrarily far


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)  # type: ignore[arg-type]


def check_segmentation(seg: object, height: int, width: int) -> None:
    """Raise RLEError unless `seg` is a compressed RLE string, an RLE dict (compressed or not) of this size, or a
    polygon list; None (object absent) is accepted. Any other value (wrong types included) is an RLEError too, so
    `decode` never meets a value it cannot handle."""
    if seg is None:
        return
    if isinstance(seg, str):
        counts: str | list[int] = seg
    elif isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise RLEError("RLE dict needs 'size' and 'counts'")
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            raise RLEError(f"RLE size must be [height, width] integers, got {str(size)[:60]}")
        if size != [height, width]:
            raise RLEError(f"RLE size {size} differs from the frame size [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            # pycocotools takes uint32 runs; a float, bool or huge value would be truncated or overflow silently
            if not all(_is_int(c) and 0 <= c <= height * width for c in counts):
                raise RLEError(f"RLE counts list must hold integers 0..{height * width}")
        elif not isinstance(counts, str):
            raise RLEError(f"RLE counts must be a string or a list of ints, got {type(counts).__name__}")
    elif isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
            raise RLEError("polygon must be a list of [x1, y1, x2, y2, x3, y3, ...] lists with >= 3 points")
        if not all(_is_number(v) for p in seg for v in p):
            raise RLEError("polygon coordinates must be finite numbers")
        # pycocotools scales coordinates into C ints without a check: ~1e9 overflows and crashes the process
        limit = POLYGON_REACH * max(height, width)
        if any(abs(v) > limit for p in seg for v in p):
            raise RLEError(f"polygon coordinates must lie within {POLYGON_REACH}x the frame size (|x|, |y| <= {limit})")
        return
    else:
        raise RLEError(f"unsupported segmentation type {type(seg).__name__}")
    total = rle_total(counts)
    if total != height * width:
        raise RLEError(f"RLE covers {total} pixels, the frame has {height}x{width} = {height * width}")


def decode(seg: object, height: int, width: int) -> np.ndarray:
    """Decode a checked segmentation to an H*W bool mask (all False for None)."""
    if seg is None:
        return np.zeros((height, width), dtype=bool)
    if isinstance(seg, str):
        rle = {"size": [height, width], "counts": seg.encode("ascii")}
    elif isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = {"size": [height, width], "counts": seg["counts"].encode("ascii")}
    with warnings.catch_warnings():
        # pycocotools' Masks.__array__ predates numpy 2's copy keyword; harmless.
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)

"""Mask I/O and mask-side warps (all numpy/OpenCV, uint8, nearest): object ids stay exact."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from cutie.utils.image_files import ID_MODES, FileCheckError, jpeg_header


class BadSampleError(RuntimeError):
    """A source file of a sample cannot be read; the sample is replaced by another deterministic one."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadSampleError(path, f"unreadable ({e})") from e
    if not data.startswith(b"\xff\xd8"):
        raise BadSampleError(path, "not a JPEG (no start-of-image marker)")
    if data.rfind(b"\xff\xd9", max(0, len(data) - 4096)) < 0:  # decoders would silently grey-fill the rest
        raise BadSampleError(path, "truncated JPEG (no end-of-image marker)")
    return data


def read_ids(path: str) -> np.ndarray:
    """Object ids of a VOS mask, H*W uint8: palette indices for palette PNGs (not colours), values for grayscale."""
    try:
        with Image.open(path) as im:
            if im.mode not in ID_MODES:
                raise BadSampleError(path, f"mask mode {im.mode} has colours, not object ids (need a palette PNG)")
            ids = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSampleError(path, f"corrupt mask ({e})") from e
    if ids.dtype != np.uint8:
        if ids.max(initial=0) > 255:
            raise BadSampleError(path, "object ids above 255 (convert the dataset to palette PNGs)")
        ids = ids.astype(np.uint8)
    return ids


def read_binary(path: str) -> np.ndarray:
    """A static-set saliency mask as 0/1 uint8 (grey level > 127 is foreground, as the official threshold)."""
    try:
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSampleError(path, f"corrupt mask ({e})") from e
    return (grey > 127).astype(np.uint8)


def jpeg_size(data: bytes, path: str) -> tuple[int, int]:
    """(W, H) from a JPEG's frame header (segment walk, no decode)."""
    try:
        w, h, _ = jpeg_header(io.BytesIO(data).read)
    except FileCheckError as e:
        raise BadSampleError(path, e.detail) from None
    return w, h


def check_same_size(mask: np.ndarray, mask_path: str, jpeg: bytes, jpeg_path: str) -> None:
    """A mask of another size than its frame would be warped with the frame's transform into misaligned labels:
    the sample is bad instead (replaced and counted). The data check rejects such pairs; this catches files that
    changed after it."""
    w, h = jpeg_size(jpeg, jpeg_path)
    if mask.shape[:2] != (h, w):
        raise BadSampleError(
            mask_path,
            f"mask {mask.shape[1]}x{mask.shape[0]} but its frame {jpeg_path} is {w}x{h} "
            "(fix: run scripts/check_data.py)",
        )


def decode_jpeg_size(data: bytes, path: str) -> tuple[int, int]:
    """(W, H) from a JPEG header without decoding."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSampleError(path, f"corrupt JPEG ({e})") from e


def warp_nearest(mask: np.ndarray, m: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Warp a uint8 id map with an output->source affine matrix; outside = 0."""
    return cv2.warpAffine(
        mask,
        m[:2].astype(np.float64),
        (out_hw[1], out_hw[0]),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def remap_nearest(mask: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """Warp a uint8 id map with a dense H*W*2 map of source coordinates; outside = 0."""
    return cv2.remap(mask, dense, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def blurred_alpha(obj: np.ndarray) -> np.ndarray:
    """Soft paste weights for a T*H*W bool/0-1 mask: Gaussian 5x5, sigma 1, per frame (float32)."""
    out = np.empty(obj.shape, np.float32)
    for t in range(obj.shape[0]):
        out[t] = cv2.GaussianBlur(obj[t].astype(np.float32), (5, 5), 1.0)
    return out


def labels_of(frame: np.ndarray) -> list[int]:
    """Non-zero ids present in one frame, ascending."""
    present = np.bincount(frame.ravel(), minlength=256)
    present[0] = 0
    return np.flatnonzero(present).tolist()


def relabel(masks: np.ndarray, mapping: dict[int, int] | list[int]) -> np.ndarray:
    """Map ids through a lookup table: a list [a, b, ...] maps a->1, b->2, ...; a dict maps id -> new id.
    Every other id becomes background."""
    items = mapping.items() if isinstance(mapping, dict) else ((lab, i + 1) for i, lab in enumerate(mapping))
    lut = np.zeros(256, np.uint8)
    for old, new in items:
        lut[old] = new
    flat = masks.reshape(-1, masks.shape[-1])  # 2-D for cv2.LUT
    return cv2.LUT(flat, lut).reshape(masks.shape)

"""Checks of one image file, JPEG or PNG, from its bytes: enough to catch what would break or silently corrupt
training or evaluation, much faster than decoding (the choices: cutie/data/index/frame_check.py, which runs these
on every file of a dataset, in parallel and cached). Shared by the training data check, the dataset converters
and evaluation's input check, so that a file is judged the same way wherever it is read."""

from __future__ import annotations

import math
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

JPEG_TAIL = 4096  # the end-of-image marker must sit within the last 4 KB (as in masks.read_bytes)
_JPEG_HEAD = 1 << 16  # first read; headers with big EXIF/ICC segments read on
# SOF0..SOF15 carry the frame header; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0..7: no length field
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# colour type -> (allowed bit depths, channels)
_PNG_TYPES = {0: ((1, 2, 4, 8, 16), 1), 2: ((8, 16), 3), 3: ((1, 2, 4, 8), 1), 4: ((8, 16), 2), 6: ((8, 16), 4)}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
ID_MODES = ("P", "L", "1", "I;16", "I")  # PNG modes that carry object ids (RGB masks carry colours)
# A header claiming more pixels is treated as corrupt (decompression bomb guard). Below PIL's own hard limit
# (2 * Image.MAX_IMAGE_PIXELS = 179M), which validation reads frames with: a frame that passes here opens there.
MAX_PIXELS = 1 << 27


def _bomb(width: int, height: int) -> str:
    return f"its header declares {width}x{height} pixels, more than {MAX_PIXELS} (a decompression bomb)"


class FileCheckError(Exception):
    """A file fails its check: `kind` is a problem kind of cutie/data/index/problems.py, `detail` says what is wrong."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class FileInfo:
    """A file that passed: its size in pixels, a PIL-style mode, whether its ids exceed 255 (16-bit grey), and
    (kind 'png_ids' only) the object ids it holds, background 0 excluded, sorted."""

    width: int
    height: int
    mode: str
    wide_ids: bool = False
    ids: tuple[int, ...] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class FileError:
    kind: str
    detail: str


FileResult = FileInfo | FileError


def unreadable(e: OSError) -> FileError:
    """The problem of a file that cannot be opened or stat'ed."""
    return FileError("unreadable", str(e.strerror or e))


# ----------------------------------------------------------------------------------------------- JPEG


def jpeg_header(read: Callable[[int], bytes]) -> tuple[int, int, int]:
    """(width, height, components) from a JPEG's segments up to start-of-scan; `read(n)` returns the next n bytes
    (fewer at the end of the file). Raises FileCheckError."""
    buf = bytearray(read(_JPEG_HEAD))
    if not buf:
        raise FileCheckError("empty_file", "0 bytes")
    if buf[:2] != b"\xff\xd8":
        raise FileCheckError("corrupt_jpeg", "not a JPEG (no start-of-image marker)")

    def need(end: int) -> None:
        while len(buf) < end:
            more = read(max(_JPEG_HEAD, end - len(buf)))
            if not more:
                raise FileCheckError("truncated_jpeg", f"the file ends inside its header (at byte {len(buf)})")
            buf.extend(more)

    pos, frame = 2, None
    while True:
        need(pos + 2)
        if buf[pos] != 0xFF:
            raise FileCheckError("corrupt_jpeg", f"no segment marker at byte {pos} of the header")
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            raise FileCheckError("corrupt_jpeg", "end-of-image before any image data")
        need(pos + 4)
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        if length < 2:
            raise FileCheckError("corrupt_jpeg", f"segment length {length} at byte {pos}")
        need(pos + 2 + length)
        if marker in _SOF:
            if length < 8:
                raise FileCheckError("corrupt_jpeg", "frame header too short")
            height, width = struct.unpack_from(">HH", buf, pos + 5)
            frame = (width, height, buf[pos + 9])
        elif marker == 0xDA:
            break
        pos += 2 + length
    if frame is None:
        raise FileCheckError("corrupt_jpeg", "no frame header (SOF) before the image data")
    if frame[0] * frame[1] > MAX_PIXELS:
        raise FileCheckError("corrupt_jpeg", _bomb(frame[0], frame[1]))
    if frame[0] == 0 or frame[1] == 0:
        raise FileCheckError("corrupt_jpeg", f"frame header size {frame[0]}x{frame[1]}")
    return frame


def check_jpeg(path: str) -> FileInfo:
    """Header + end marker of a JPEG (see the module docstring); raises FileCheckError."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            width, height, comps = jpeg_header(f.read)
            f.seek(max(0, size - JPEG_TAIL))
            tail = f.read()
    except OSError as e:
        raise FileCheckError("unreadable", str(e.strerror or e)) from e
    if b"\xff\xd9" not in tail:
        raise FileCheckError("truncated_jpeg", f"no end-of-image marker ({size} bytes): the file was cut short")
    mode = _JPEG_MODES.get(comps)
    if mode is None:
        raise FileCheckError("corrupt_jpeg", f"{comps} colour components")
    return FileInfo(width, height, mode)


# ----------------------------------------------------------------------------------------------- PNG


def _png_data_bytes(width: int, height: int, depth: int, channels: int, interlaced: bool) -> list[tuple[int, int]]:
    """(rows, bytes per row incl. the filter byte) of each pass of the image data."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    out = []
    for x0, y0, dx, dy in passes:
        cols, rows = math.ceil(max(0, width - x0) / dx), math.ceil(max(0, height - y0) / dy)
        if cols and rows:
            out.append((rows, 1 + math.ceil(cols * depth * channels / 8)))
    return out


def _png_chunks(data: bytes) -> Iterable[tuple[bytes, memoryview]]:
    view, pos = memoryview(data), len(PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise FileCheckError("corrupt_png", f"the file ends at byte {len(data)} before its IEND chunk: cut short")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        name = ctype.decode("latin-1")
        end = pos + 12 + length
        if end > len(data):
            raise FileCheckError("corrupt_png", f"the file ends inside its {name} chunk: cut short")
        body = view[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(body, zlib.crc32(ctype)) != crc:
            raise FileCheckError("corrupt_png", f"CRC error in its {name} chunk: damaged")
        yield ctype, body
        if ctype == b"IEND":
            return
        pos = end


def check_png(path: str) -> FileInfo:
    """Structure + complete image data of a PNG (see the module docstring); raises FileCheckError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileCheckError("unreadable", str(e.strerror or e)) from e
    if not data:
        raise FileCheckError("empty_file", "0 bytes")
    if not data.startswith(PNG_SIGNATURE):
        raise FileCheckError("corrupt_png", "not a PNG (no PNG signature)")
    header, idat, palette = None, [], False
    for ctype, body in _png_chunks(data):
        if header is None:
            if ctype != b"IHDR" or len(body) != 13:
                raise FileCheckError("corrupt_png", "the first chunk is not a valid IHDR")
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"PLTE":
            palette = True
    width, height, depth, ctype_, _compression, _filter, interlace = header
    depths, channels = _PNG_TYPES.get(ctype_, ((), 0))
    if width * height > MAX_PIXELS:
        raise FileCheckError("corrupt_png", _bomb(width, height))
    if depth not in depths or interlace > 1 or width == 0 or height == 0:
        raise FileCheckError(
            "corrupt_png", f"invalid header ({width}x{height}, bit depth {depth}, colour type {ctype_})"
        )
    if ctype_ == 3 and not palette:
        raise FileCheckError("corrupt_png", "palette image without a palette (PLTE) chunk")
    passes = _png_data_bytes(width, height, depth, channels, bool(interlace))
    expected = sum(r * b for r, b in passes)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), expected + 1)  # bounded: a bomb stops at expected + 1
    except zlib.error as e:
        raise FileCheckError("corrupt_png", f"image data does not inflate ({e}): damaged") from e
    if len(raw) != expected or not inflater.eof:
        raise FileCheckError(
            "corrupt_png",
            f"image data incomplete ({len(raw)} of {expected} bytes{'' if inflater.eof else ', stream not ended'})",
        )
    if not interlace and np.frombuffer(raw, np.uint8)[:: passes[0][1]].max() > 4:
        raise FileCheckError("corrupt_png", "invalid row filter type: damaged image data")
    mode = {0: {1: "1", 16: "I;16"}.get(depth, "L"), 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}[ctype_]
    wide = mode == "I;16" and _max_grey16(data) > 255
    return FileInfo(width, height, mode, wide)


def check_png_ids(path: str) -> FileInfo:
    """check_png, then the object ids of an id mask (palette indices or grey values; none for a colour mask,
    which the scan rejects anyway)."""
    info = check_png(path)
    if info.mode not in ID_MODES or info.wide_ids:
        return info
    from PIL import Image

    try:
        with Image.open(path) as im:
            values = np.unique(np.asarray(im))
    except (OSError, ValueError, SyntaxError) as e:
        raise FileCheckError("corrupt_png", f"does not decode ({e})") from e
    ids = tuple(int(v) for v in values if v != 0)
    return FileInfo(info.width, info.height, info.mode, info.wide_ids, ids)


def _max_grey16(data: bytes) -> int:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return int(np.asarray(im).max(initial=0))


# ----------------------------------------------------------------------------------------------- one file


CHECKS: dict[str, Callable[[str], FileInfo]] = {"jpeg": check_jpeg, "png": check_png, "png_ids": check_png_ids}


def check_file(path: str, kind: str) -> FileResult:
    try:
        return CHECKS[kind](path)
    except FileCheckError as e:
        return FileError(e.kind, e.detail)


def check_frame(path: str | os.PathLike) -> FileResult:
    """check_file for a frame: a `.png` is checked as a PNG, any other name as a JPEG (the training check's rule)."""
    kind = "png" if os.fspath(path).lower().endswith(".png") else "jpeg"
    return check_file(os.fspath(path), kind)

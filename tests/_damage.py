"""Ways to damage one frame file of a generated dataset, and the summary phrase the data check reports for each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image


def wrong_size_mask(png: Path) -> None:
    """The same objects at another size (nearest-neighbour, palette kept): a plausible export mistake."""
    with Image.open(png) as im:
        small = im.resize((im.width // 2 + 1, im.height // 2), Image.Resampling.NEAREST)
    small.save(png)


def zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def rgb_png(png: Path) -> None:
    with Image.open(png) as im:
        rgb = im.convert("RGB")
    rgb.save(png)


def truncated_jpeg(jpg: Path) -> None:
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])


# name -> (file it damages: 'png' | 'jpg', how, phrase of the summary line)
DEFECTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "wrong_size_mask": ("png", wrong_size_mask, "frames whose image and mask sizes differ"),
    "zero_byte_png": ("png", zero_byte, "empty (0-byte) files"),
    "rgb_png": ("png", rgb_png, "colour (RGB) masks instead of object ids"),
    "truncated_jpeg": ("jpg", truncated_jpeg, "truncated JPEGs"),
}

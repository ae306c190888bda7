"""Reading evaluation videos in the DAVIS layout and writing index-mask PNGs.

<image_dir>/<video>/<frame>.jpg and <mask_dir>/<video>/<frame>.png (palette PNGs of object ids). The first
mask file of a video gives its first annotated frame; with `use_all_masks` (YouTube-VOS, MOSE style) every
mask file present is read, so objects can first appear on later frames.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cutie.utils.atomic import atomic_write
from cutie.utils.palette import davis_palette

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Frame:
    name: str  # file stem, used for the output PNG
    image: torch.Tensor  # 3*H*W in [0, 1], resized when the video is
    mask: torch.Tensor | None  # H*W object ids (resized with nearest), or None
    size: tuple[int, int]  # original H, W: outputs are restored to it
    save: bool  # whether this frame's result is required


def list_videos(mask_dir: str | os.PathLike, subset: str | os.PathLike | None = None) -> list[str]:
    """Video names: the lines of a DAVIS ImageSets file, or every folder of the mask directory."""
    if subset is not None:
        path = Path(subset)
        if not path.is_file():
            raise FileNotFoundError(f"subset file {path} not found (one video name per line)")
        return sorted(line.strip() for line in path.read_text().splitlines() if line.strip())
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"mask directory {mask_dir} not found (set the dataset's mask_directory)")
    return sorted(p.name for p in mask_dir.iterdir() if p.is_dir())


def required_frames(meta_json: str | os.PathLike | None) -> dict[str, set[str]]:
    """YouTube-VOS meta.json: the frames to save per video (all objects' frames); {} when not given."""
    if meta_json is None:
        return {}
    videos = json.loads(Path(meta_json).read_text())["videos"]
    return {v: {f for obj in info["objects"].values() for f in obj["frames"]} for v, info in videos.items()}


class VideoReader:
    """One video's frames in order, with masks where the protocol gives them."""

    def __init__(
        self,
        name: str,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        *,
        size: int = -1,
        use_all_masks: bool = False,
        to_save: set[str] | None = None,
    ):
        self.name = name
        self.image_dir = Path(image_dir) / name
        self.mask_dir = Path(mask_dir) / name
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"frames of video {name} not found: {self.image_dir}")
        if not self.mask_dir.is_dir():
            raise FileNotFoundError(f"masks of video {name} not found: {self.mask_dir}")
        self.frames = sorted(p.name for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        masks = sorted(p.stem for p in self.mask_dir.glob("*.png"))
        if not self.frames or not masks:
            raise FileNotFoundError(f"video {name}: no frames in {self.image_dir} or no masks in {self.mask_dir}")
        self.mask_stems = set(masks)
        self.first_mask = masks[0]
        self.size = size
        self.use_all_masks = use_all_masks
        self.to_save = to_save
        with Image.open(self.mask_dir / f"{self.first_mask}.png") as first:
            self.palette = first.getpalette() if first.mode == "P" else None

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        for file in self.frames:
            yield self._read(file)

    def _read(self, file: str) -> Frame:
        stem = Path(file).stem
        with Image.open(self.image_dir / file) as img:
            rgb = np.asarray(img.convert("RGB"))
        h, w = rgb.shape[:2]
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255  # 3*H*W
        new_size = None
        if self.size > 0 and min(h, w) > self.size:  # shorter side down to `size`, as the official reader
            # torchvision's Resize(size): the shorter side becomes `size`, the longer one is truncated
            long = int(self.size * max(h, w) / min(h, w))
            new_size = (self.size, long) if h <= w else (long, self.size)
            image = F.interpolate(image[None], size=new_size, mode="bilinear", antialias=True, align_corners=False)[0]
        mask = None
        if (self.use_all_masks or stem == self.first_mask) and stem in self.mask_stems:
            with Image.open(self.mask_dir / f"{stem}.png") as m:
                ids = np.asarray(m)
            if ids.ndim != 2:
                raise ValueError(f"{self.mask_dir / stem}.png: expected an index (palette) PNG, got {ids.shape}")
            mask = torch.from_numpy(ids.astype(np.int64))
            if new_size is not None:
                mask = F.interpolate(mask[None, None].float(), size=new_size, mode="nearest")[0, 0].long()
        save = self.to_save is None or stem in self.to_save
        return Frame(stem, image, mask, (h, w), save)


def save_index_png(path: Path, mask: np.ndarray, palette: list[int] | None) -> None:
    """Writes H*W object ids as a palette PNG, atomically."""
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(palette if palette is not None else davis_palette())
    atomic_write(path, lambda f: img.save(f, format="PNG"))

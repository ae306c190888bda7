"""SA-V val/test videos for the inference procedure (per-object PNG folders), and predictions in that layout.

<image_dir>/<video>/<frame>.jpg (JPEGImages_24fps: every frame of the 24 fps video) and
<mask_dir>/<video>/<object>/<frame>.png (Annotations_6fps: one binary mask per object on every 4th frame; objects
may overlap). The network's object id k+1 is the k-th object folder in sorted order.

Inputs: each object is given on the first annotated frame where its mask is not empty (an object that shows up
late has empty masks before); with use_all_masks=false only the objects showing on the first annotated frame are
given (SAM 2's default SA-V procedure gives frame 0 only). Objects given on one frame may overlap but Cutie takes
one id per pixel: a pixel goes to the SMALLEST of them (its area on that frame; ties: the earlier folder), so a
part inside a whole stays visible, the rule cutie/dataprep/sav.py uses for training. An object left with no pixel
waits for its next annotated frame. The masks of objects already given are never fed back.

Outputs: <out>/<video>/<object>/<frame>.png, 0/1 palette PNGs for every object (empty before it is given) on the
annotated frames (on every frame with save_all), so SA-V's own evaluator can score them as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cutie.inference.video_io import IMAGE_SUFFIXES, Frame, check_mask_size, read_frame, resize_mask, save_index_png
from cutie.metrics.sav import read_binary_mask
from cutie.utils.palette import davis_palette
from cutie.utils.paths import confined


class SavVideoReader:
    """One SA-V video's frames in order, each with the index mask of the objects given on it (or None)."""

    def __init__(
        self,
        name: str,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        *,
        size: int = -1,
        use_all_masks: bool = True,
        save_all: bool = False,
    ):
        self.name = name
        self.image_dir = confined(image_dir, name, what="video name")
        self.mask_dir = confined(mask_dir, name, what="video name")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"frames of video {name} not found: {self.image_dir}")
        if not self.mask_dir.is_dir():
            raise FileNotFoundError(f"masks of video {name} not found: {self.mask_dir}")
        self.frames = sorted(p.name for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        self.object_names = sorted(p.name for p in self.mask_dir.iterdir() if p.is_dir())
        if not self.frames or not self.object_names:
            raise FileNotFoundError(
                f"video {name}: no frames in {self.image_dir} or no object folders in {self.mask_dir} "
                "(the SA-V layout is <video>/<object>/<frame>.png)"
            )
        if len(self.object_names) > 255:
            raise ValueError(f"{self.mask_dir}: {len(self.object_names)} objects; at most 255 fit an index mask")
        self.annotated = {p.stem for obj in self.object_names for p in (self.mask_dir / obj).glob("*.png")}
        if not self.annotated:
            raise FileNotFoundError(f"video {name}: no mask PNG in the object folders of {self.mask_dir}")
        stems = {Path(f).stem for f in self.frames}
        missing = sorted(self.annotated - stems)
        if missing:
            raise FileNotFoundError(
                f"video {name}: masks of frames {missing[:5]} have no image in {self.image_dir} (fix: extract "
                "every frame of the video, JPEGImages_24fps)"
            )
        self.first_annotated = min(self.annotated)
        self.size = size
        self.use_all_masks = use_all_masks
        self.save_all = save_all
        self.palette = davis_palette()

    def __len__(self) -> int:
        return len(self.frames)

    def __iter__(self) -> Iterator[Frame]:
        pending = list(range(len(self.object_names)))  # objects not given yet
        for file in self.frames:
            stem = Path(file).stem
            image, size, new_size = read_frame(self.image_dir / file, self.size)
            mask = None
            if pending and stem in self.annotated and (self.use_all_masks or stem == self.first_annotated):
                ids, given = self.input_mask(stem, pending, size, self.image_dir / file)
                if given:
                    pending = [k for k in pending if k not in given]
                    mask = resize_mask(torch.from_numpy(ids), new_size)
                if not self.use_all_masks:
                    pending = []  # only the first annotated frame gives objects
            yield Frame(stem, image, mask, size, save=self.save_all or stem in self.annotated)

    def input_mask(
        self, stem: str, objects: list[int], size: tuple[int, int], frame: Path
    ) -> tuple[np.ndarray, set[int]]:
        """(H*W int64 ids of the objects given on this frame, their indices): the non-empty masks of `objects`,
        overlaps resolved smallest-first (module docstring)."""
        candidates = []
        for k in objects:
            path = self.mask_dir / self.object_names[k] / f"{stem}.png"
            if not path.is_file():
                continue
            m = read_binary_mask(path)
            check_mask_size(path, m.shape, size, frame)
            if m.any():
                candidates.append((int(m.sum()), k, m))
        ids = np.zeros(size, dtype=np.int64)
        # largest first and, at equal areas, the later folder first, so the smaller (or earlier) one is painted last
        for _, k, m in sorted(candidates, key=lambda c: (-c[0], -c[1])):
            ids[m] = k + 1
        given = {k for _, k, _ in candidates if (ids == k + 1).any()}
        return ids, given


def save_object_pngs(video_dir: Path, stem: str, ids: np.ndarray, object_names: list[str]) -> None:
    """Writes one frame's H*W object ids as SA-V per-object 0/1 PNGs: <video_dir>/<object>/<stem>.png."""
    palette = davis_palette()
    for k, obj in enumerate(object_names):
        save_index_png(video_dir / obj / f"{stem}.png", (ids == k + 1).astype(np.uint8), palette)

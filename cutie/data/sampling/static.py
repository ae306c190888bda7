"""Pre-training clips from static images (official SyntheticVideoDataset semantics), as recipes.

Per image: a clip transform (scale 0.5-2 about the centre, h-flip), per frame an affine (rotation 20, scale 0.5-2,
x-shear 10), resize of the short side to the crop and a random crop, then a thin-plate spline with p=0.33. With
num_objects > 1, up to num_objects - 1 further images are pasted over the first (hard masks), one layer each.
Colour: a clip jitter with hue (0.1, 0.05, 0.05, 0.05) and grayscale p=0.05, times a jitter (0.1, 0.05, 0.05) drawn
per frame. Each frame is resampled once, blurred like the official chain's four resamplings (geometry.extra_blur).
"""

from __future__ import annotations

import cv2
import numpy as np

from cutie.data.index.datasets import Sa1bSet, StaticIndex, StaticSet
from cutie.data.index.sa1b import Sa1bError, image_size, mask_runs, read_document
from cutie.data.sampling import geometry as geo
from cutie.data.sampling.colour import clip_colours
from cutie.data.sampling.masks import (
    BadSampleError,
    check_same_size,
    labels_of,
    read_binary,
    read_bytes,
    relabel,
    remap_nearest,
    warp_nearest,
)
from cutie.data.sampling.recipe import ClipRecipe, ImageLayer
from cutie.data.sampling.tps import random_tps_params, tps_map
from cutie.utils.rle import decode

TPS_PROBABILITY = 0.33
TPS_SCALE = 0.02
# The official spline is one more bilinear resampling (cv2.remap) at the output size; ours is folded into the map.
TPS_STEP = geo.Step(np.eye(3), geo.BILINEAR, (0, 0))


def read_sa1b_mask(path: str, index: int) -> np.ndarray:
    """Mask `index` of an SA-1B annotation file as 0/1 uint8 H*W, checked again as at start-up (the file may
    have changed since): the RLE size must be the image's and its runs must cover it exactly."""
    try:
        doc = read_document(path)
        width, height = image_size(doc)
        anns = doc.get("annotations")  # type: ignore[union-attr]
        if not isinstance(anns, list) or not 0 <= index < len(anns):
            raise Sa1bError(f"annotations[{index}]: missing (the file changed after the data check)")
        mask_runs(anns[index], f"annotations[{index}]", width, height)
    except OSError as e:
        raise BadSampleError(path, f"unreadable ({e})") from e
    except Sa1bError as e:
        raise BadSampleError(path, f"{e} (fix: run scripts/check_data.py)") from None
    mask = decode(anns[index]["segmentation"], height, width).view(np.uint8)  # column-major, as RLE runs are
    return cv2.transpose(mask.T)  # row-major for the warps; OpenCV's transpose is faster than numpy's strided copy


def image_and_mask(sset: StaticSet | Sa1bSet, k: int) -> tuple[str, np.ndarray, str]:
    """(JPEG path, its 0/1 uint8 mask, the mask's file) of pair k of a static set: a saliency PNG, or one SA-1B
    annotation decoded from its RLE (one object per sample either way)."""
    if isinstance(sset, Sa1bSet):
        jpg, annotations, index = sset.sample(k)
        return jpg, read_sa1b_mask(annotations, index), annotations
    jpg, png = sset.pairs[k]
    return jpg, read_binary(png), png


class StaticClipSampler:
    """Recipes for pre-training clips from a StaticIndex."""

    def __init__(
        self,
        index: StaticIndex,
        seq_length: int,
        num_objects: int,
        crop_size: tuple[int, int],
        *,
        hue: float = 0.05,
        match_resampling: bool = True,
    ) -> None:
        """hue: the clip jitter's hue range in turns (official 0.05); match_resampling=False skips the blur that
        matches the official resamplings. The defaults reproduce the official distribution (docs/data-parity.md)."""
        self.hue = hue
        self.match_resampling = match_resampling
        self.index = index
        self.seq_length = seq_length
        self.num_objects = num_objects
        self.out_hw = (int(crop_size[0]), int(crop_size[1]))

    def __len__(self) -> int:
        return len(self.index)

    def frame_steps(self, rng: np.random.Generator, w: int, h: int) -> list[geo.Step]:
        """The official per-frame chain after the clip transform: affine (PIL, canvas of the source size), resize of
        the short side (PIL), crop."""
        out_h, out_w = self.out_hw
        frame_a = geo.affine_about_centre(w, h, rng.uniform(-20, 20), rng.uniform(0.5, 2.0), rng.uniform(-10, 10))
        short = min(out_h, out_w)  # torchvision Resize(int): the short side becomes the crop size
        if w <= h:
            rw, rh = short, int(short * h / w)
        else:
            rw, rh = int(short * w / h), short
        # RandomCrop(pad_if_needed): a window inside the resized image (padding only if it is smaller).
        x0 = int(rng.integers(0, rw - out_w + 1)) if rw >= out_w else -((out_w - rw) // 2)
        y0 = int(rng.integers(0, rh - out_h + 1)) if rh >= out_h else -((out_h - rh) // 2)
        resize = geo.resized_window(0, 0, w, h, rw, rh)  # resized pixel -> pre-resize pixel
        crop = np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]])
        return [
            geo.Step(frame_a, geo.BILINEAR, (w, h)),
            geo.Step(resize, geo.RESIZE, (rw, rh)),
            geo.Step(crop, geo.EXACT, (out_w, out_h)),
        ]

    def clip_steps(self, rng: np.random.Generator, w: int, h: int) -> list[geo.Step]:
        """The official clip transform: scale about the centre (PIL affine, canvas of the source size), h-flip."""
        steps = [geo.Step(geo.affine_about_centre(w, h, 0.0, rng.uniform(0.5, 2.0)), geo.BILINEAR, (w, h))]
        if rng.random() < 0.5:
            steps.append(geo.Step(geo.flip_h(w), geo.EXACT, (w, h)))  # flip after the clip affine
        return steps

    def _layer(self, rng: np.random.Generator, pair: int) -> tuple[ImageLayer, np.ndarray, dict]:
        sset = self.index.sets[self.index.seed_set[pair]]
        jpg, mask, png = image_and_mask(sset, int(self.index.seed_pair[pair]))
        data = read_bytes(jpg)
        check_same_size(mask, png, data, jpg)  # a smaller/larger mask would be warped into misaligned labels
        h, w = mask.shape
        t = self.seq_length
        clip = self.clip_steps(rng, w, h)
        colours = clip_colours(rng, t, clip=(0.1, 0.05, 0.05), frame=(0.1, 0.05, 0.05), hue=self.hue)
        chains = [clip + self.frame_steps(rng, w, h) for _ in range(t)]
        mats = np.stack([geo.compose(c) for c in chains])
        splines = [
            random_tps_params(rng, scale=TPS_SCALE) if rng.random() < TPS_PROBABILITY else None for _ in range(t)
        ]
        blur = np.zeros(t, np.float32)
        if self.match_resampling:
            blur[:] = [geo.extra_blur(c + [TPS_STEP] * (s is not None)) for c, s in zip(chains, splines, strict=True)]
        out_h, out_w = self.out_hw
        masks = np.empty((t, out_h, out_w), np.uint8)
        dense = None
        if any(s is not None for s in splines):
            dense = np.empty((t, out_h, out_w, 2), np.float32)
            gy, gx = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
            for i, spline in enumerate(splines):
                px, py = (gx, gy) if spline is None else tps_map(*spline, out_h, out_w)
                dense[i, ..., 0], dense[i, ..., 1] = geo.apply(mats[i], px, py)
                masks[i] = remap_nearest(mask, dense[i])
        else:
            for i in range(t):
                masks[i] = warp_nearest(mask, mats[i], self.out_hw)
        layer = ImageLayer(
            jpegs=[data] * t, matrices=mats, source_paths=[jpg] * t, dense_maps=dense, blur=blur, **colours
        )
        return layer, masks, {"dataset": sset.name, "image": jpg, "tps": [s is not None for s in splines]}

    def sample(self, rng: np.random.Generator, seed: int, skip: int | None = None) -> ClipRecipe:
        """One recipe from seed entry `seed` (plus random extra images when num_objects > 1)."""
        extra = int(rng.integers(self.num_objects))  # official: 0..num_objects-1 extra images
        pairs = [seed, *(int(x) for x in rng.integers(len(self.index), size=extra))]
        merged = np.zeros((self.seq_length, *self.out_hw), np.uint8)
        layers, alphas, infos = [], [], []
        for i, pair in enumerate(pairs):
            layer, masks, info = self._layer(rng, pair)
            layers.append(layer)
            infos.append(info)
            if i > 0:
                alphas.append(masks.astype(np.float32))
            merged[masks > 0] = i + 1
        labels = labels_of(merged[0])
        return ClipRecipe(
            layers=layers,
            alpha=np.stack(alphas) if alphas else None,
            cls_gt=relabel(merged, labels),
            num_objects=max(1, len(labels)),
            out_size=self.out_hw,
            info={"layers": infos, "objects": [(lab - 1, 1) for lab in labels]},
        )

"""An independent reference for the official loader's resampling and the statistics of docs/data-parity.md.

The official Cutie loader (torchvision transforms on PIL images) resamples each frame step by step: a PIL affine
transform of the full frame (bilinear, no antialiasing, canvas of the input size, fill = ImageNet mean), then a
resized crop (PIL crop, then PIL resize with bilinear, which widens its triangle filter when shrinking) and in
pre-training a resize of the short side and a padded crop. `pil_chain` replays a chain of cutie.data.sampling.geometry
Steps that way, with PIL only; `sharpness` compares our one-warp renderer with it on the same frames and sampled
parameters (tests/test_data_parity.py checks it, scripts/measure_data_parity.py reports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from cutie.data.render.cpu import render_layer
from cutie.data.sampling import geometry as geo
from cutie.data.sampling.geometry import BILINEAR, EXACT, RESIZE, Step
from cutie.data.sampling.recipe import ImageLayer
from cutie.data.sampling.static import TPS_PROBABILITY, TPS_STEP, StaticClipSampler
from cutie.data.sampling.tps import random_tps_params, tps_map
from cutie.data.sampling.video import VideoClipSampler

FILL = (124, 116, 104)  # official im_mean
_LUMA = np.array([0.299, 0.587, 0.114])


def _pil_coefficients(m: np.ndarray) -> tuple[float, ...]:
    """PIL's AFFINE data for an output->input matrix in pixel-centre coordinates (PIL's origin is the corner)."""
    shift = np.array([[1.0, 0, 0.5], [0, 1.0, 0.5], [0, 0, 1.0]])
    k = shift @ m @ np.linalg.inv(shift)
    return tuple(float(v) for v in k[:2].ravel())


def pil_step(im: Image.Image, step: Step) -> Image.Image:
    """One official resampling step on a PIL image."""
    if step.kind == RESIZE:  # torchvision resized_crop / Resize: crop (integer window), then PIL bilinear resize
        m, (out_w, out_h) = step.matrix, step.size
        sx, sy = m[0, 0], m[1, 1]
        x0, y0 = round(m[0, 2] - 0.5 * sx + 0.5), round(m[1, 2] - 0.5 * sy + 0.5)
        w, h = round(sx * out_w), round(sy * out_h)
        if (x0, y0, w, h) != (0, 0, *im.size):
            im = im.crop((x0, y0, x0 + w, y0 + h))
        return im.resize((out_w, out_h), Image.BILINEAR)
    resample = {EXACT: Image.NEAREST, BILINEAR: Image.BILINEAR}[step.kind]  # EXACT: flips, integer crops
    return im.transform(step.size, Image.AFFINE, _pil_coefficients(step.matrix), resample=resample, fillcolor=FILL)


def pil_chain(rgb: np.ndarray, steps: list[Step]) -> np.ndarray:
    """H*W*3 uint8 RGB after the official step-by-step resampling of `steps`."""
    im = Image.fromarray(rgb)
    for step in steps:
        im = pil_step(im, step)
    return np.asarray(im)


def tps_remap(rgb: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """The official spline step: cv2.remap bilinear on the cropped frame, black outside."""
    return cv2.remap(rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ _LUMA


def mean_abs_laplacian(rgb: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Mean |4-neighbour Laplacian| of the luma (grey levels), over `valid` pixels (all when None)."""
    lap = np.abs(cv2.Laplacian(luma(rgb), cv2.CV_64F, ksize=1))
    return float(lap.mean() if valid is None else lap[valid].mean())


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees of N*3 RGB values (float)."""
    px = np.asarray(rgb, np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(px, cv2.COLOR_RGB2HSV)[:, 0, 0].astype(np.float64)


def hue_offset(a: np.ndarray, b: np.ndarray) -> float:
    """Signed hue change (degrees, in [-180, 180)) from RGB colour a to RGB colour b."""
    d = hue_degrees(np.asarray(b)[None])[0] - hue_degrees(np.asarray(a)[None])[0]
    return float((d + 180.0) % 360.0 - 180.0)


# ------------------------------------------------------------------------------------------- sharpness


class _Crop:
    """What the samplers' geometry methods read: the output size."""

    def __init__(self, out_hw: tuple[int, int]) -> None:
        self.out_hw = out_hw


def _render_one(data: bytes, m: np.ndarray, blur: float, out_hw: tuple[int, int], dense: np.ndarray | None):
    """Our renderer on one frame with neutral colour: H*W*3 uint8."""
    one = np.ones(1, np.float32)
    layer = ImageLayer(
        jpegs=[data],
        matrices=m[None],
        brightness=one,
        contrast=one,
        saturation=one,
        grayscale=np.zeros(1, bool),
        dense_maps=None if dense is None else dense[None],
        blur=np.array([blur], np.float32),
    )
    return render_layer(layer, out_hw)[0]


@dataclass(frozen=True)
class Sharpness:
    """Mean |Laplacian| over the frames: ours (one warp + the recipe's blur), ours without the blur, the PIL chain."""

    ours: float
    ours_without_blur: float
    reference: float


def sharpness(jpegs: Sequence[bytes], stage: str, out_hw: tuple[int, int], frames: int, seed: int) -> Sharpness:
    """Draw `frames` source frames and the geometry of `stage` ("main" or "pre"); render each with ours and with
    the official step-by-step chain, compared where both show the source (the official chain fills more in
    pre-training; docs/data-parity.md)."""
    rng = np.random.default_rng(seed)
    ours, sharp, ref = [], [], []
    for _ in range(frames):
        data = jpegs[int(rng.integers(len(jpegs)))]
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        dense = None
        if stage == "main":
            steps = VideoClipSampler.geometry(_Crop(out_hw), rng, w, h)
        else:
            steps = StaticClipSampler.clip_steps(_Crop(out_hw), rng, w, h)
            steps += StaticClipSampler.frame_steps(_Crop(out_hw), rng, w, h)
        m = geo.compose(steps)
        official = pil_chain(rgb, steps)
        chain = steps
        if stage == "pre" and rng.random() < TPS_PROBABILITY:
            px, py = tps_map(*random_tps_params(rng), *out_hw)
            official = tps_remap(official, px, py)
            dense = np.stack(geo.apply(m, px, py), -1)
            chain = [*steps, TPS_STEP]
        ones = np.ones((h, w), np.uint8)
        if dense is None:
            seen = cv2.warpAffine(ones, m[:2], out_hw[::-1], flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
        else:
            seen = cv2.remap(ones, dense, None, cv2.INTER_NEAREST)
        official_seen = ((official != FILL).any(-1) & official.any(-1)).astype(np.uint8)
        valid = cv2.erode(seen & official_seen, np.ones((5, 5), np.uint8)) > 0
        ours.append(mean_abs_laplacian(_render_one(data, m, geo.extra_blur(chain), out_hw, dense), valid))
        sharp.append(mean_abs_laplacian(_render_one(data, m, 0.0, out_hw, dense), valid))
        ref.append(mean_abs_laplacian(official, valid))
    return Sharpness(float(np.mean(ours)), float(np.mean(sharp)), float(np.mean(ref)))

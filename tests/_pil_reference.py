"""An independent reference for the official loader's resampling and the statistics of docs/data-parity.md.

The official Cutie loader (torchvision transforms on PIL images) resamples each frame step by step: a PIL affine
transform of the full frame (bilinear, no antialiasing, canvas of the input size, fill = ImageNet mean), then a
resized crop (PIL crop, then PIL resize with bilinear, which widens its triangle filter when shrinking) and in
pre-training a resize of the short side and a padded crop. `pil_chain` replays a chain of cutie.data.sampling.geometry
Steps that way, with PIL only, so tests and scripts/measure_data_parity.py compare our one-warp renderer with it.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from cutie.data.sampling.geometry import BILINEAR, EXACT, RESIZE, Step

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

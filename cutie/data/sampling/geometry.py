"""Geometric augmentation as 3x3 matrices mapping an OUTPUT pixel to a SOURCE pixel (OpenCV pixel centres).

Every step of a chain is an output->input map, so a chain composes by plain matrix products and each frame is
resampled exactly once. Distributions follow torchvision's RandomAffine / RandomResizedCrop / Resize+RandomCrop
(angles and shears symmetric, so the rotation sign convention does not matter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def flip_h(width: int) -> np.ndarray:
    """Horizontal flip of a width-W canvas (its own inverse)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def affine_about_centre(
    width: int, height: int, angle_deg: float, scale: float = 1.0, shear_x_deg: float = 0.0
) -> np.ndarray:
    """Output->input map of a rotation/scale/x-shear about the canvas centre (output canvas = input canvas)."""
    cx, cy = (width - 1) * 0.5, (height - 1) * 0.5
    a, sh = math.radians(angle_deg), math.radians(shear_x_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shear = np.array([[1.0, math.tan(sh)], [0.0, 1.0]])
    fwd = rot @ shear * scale  # input->output linear part
    inv = np.linalg.inv(fwd)
    m = np.eye(3)
    m[:2, :2] = inv
    m[:2, 2] = np.array([cx, cy]) - inv @ np.array([cx, cy])
    return m


def resized_window(x0: float, y0: float, win_w: float, win_h: float, out_w: int, out_h: int) -> np.ndarray:
    """Output->input map that stretches the window (x0, y0, win_w, win_h) of the input onto out_w*out_h."""
    sx, sy = win_w / out_w, win_h / out_h
    return np.array([[sx, 0.0, 0.5 * sx - 0.5 + x0], [0.0, sy, 0.5 * sy - 0.5 + y0], [0.0, 0.0, 1.0]])


def random_resized_crop_window(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float] = (0.36, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) as torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop."""
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_r[0], log_r[1]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def apply(m: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply an affine 3x3 map to coordinate arrays (float32 in, float32 out)."""
    m = m.astype(np.float32)
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def source_scale(m: np.ndarray) -> float:
    """Smallest number of source pixels per output pixel along any direction (for reduced-size decoding)."""
    return float(np.linalg.svd(m[:2, :2], compute_uv=False).min())


# ---------------------------------------------------------------------------------------------- resampling chains
# The official loader resamples a frame several times with PIL (an affine on the full frame, then a resize, and in
# pre-training a second affine and the spline); we resample once with the composed matrix. Each resampling blurs,
# so one warp is sharper (measured: 1.36x the mean |Laplacian|). A chain of steps records what the official code
# does, `compose` gives our one matrix and `extra_blur` the Gaussian variance that makes the one warp as soft.

EXACT, BILINEAR, RESIZE = "exact", "bilinear", "resize"


@dataclass(frozen=True)
class Step:
    """One official resampling step: output->input matrix, how PIL resamples, and the canvas it writes (W, H).

    kind: EXACT (flip, integer crop: pixels copied), BILINEAR (PIL affine transform, cv2.remap: plain bilinear,
    no antialiasing), RESIZE (PIL resize: a triangle filter widened by the shrink factor, i.e. antialiased)."""

    matrix: np.ndarray
    kind: str
    size: tuple[int, int]


def compose(steps: list[Step]) -> np.ndarray:
    """The one output->source matrix of a chain (steps in the order the official code applies them)."""
    m = np.eye(3)
    for step in steps:
        m = m @ step.matrix
    return m


def _step_scale(m: np.ndarray) -> float:
    """Input pixels per output pixel of a step (geometric mean over the two axes)."""
    return math.sqrt(abs(float(np.linalg.det(m[:2, :2]))))


def extra_blur(steps: list[Step]) -> float:
    """Variance (output pixels^2) of the recipe blur that, after one bilinear warp with compose(steps), softens a
    frame as much as the official chain does, matched at MATCH_FREQUENCY (see below).

    Per step, the mean power response at frequency w (radians per final output pixel), with d the step's input
    pixel in output pixels: bilinear interpolation at a uniformly random sub-pixel offset f weights two neighbours
    (1 - f, f): 1 - (1 - cos(w d)) / 3; a PIL resize that shrinks by s >= 1 filters with a triangle of half-width
    s input pixels (one output pixel of the step, W): sinc(w W / 2)^4; when it enlarges it is bilinear. The chain
    multiplies them; our one warp has the bilinear response of a source pixel; the Gaussian makes up the ratio."""
    power, px = 1.0, 1.0  # px: one output pixel of the current step, in final output pixels
    for step in reversed(steps):
        s = _step_scale(step.matrix)
        px_in = px / s
        if step.kind == BILINEAR or (step.kind == RESIZE and s < 1):
            power *= _bilinear_power(px_in)
        elif step.kind == RESIZE:
            x = 0.5 * MATCH_FREQUENCY * px
            power *= (math.sin(x) / x) ** 4
        px = px_in
    target = math.sqrt(power / _bilinear_power(px))  # amplitude response wanted from the Gaussian
    if target >= _RESPONSES[0]:
        return 0.0
    n = _N_RESPONSES
    sigma = float(np.interp(-target, -_RESPONSES[:n], _SIGMAS[:n]))  # clamps to the table's ends
    return float(np.interp(sigma, _SIGMAS, _VARIANCES))


def _bilinear_power(d: float) -> float:
    """Mean power response at MATCH_FREQUENCY of bilinear interpolation on a grid of spacing d (beyond the grid's
    Nyquist frequency: aliased, taken at Nyquist)."""
    return 1.0 - (1.0 - math.cos(min(MATCH_FREQUENCY * d, math.pi))) / 3.0


def _kernel_variance(sigma: float, radius: int) -> float:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return float((k * x * x).sum() / k.sum())


def _radius(sigma: float) -> int:
    """Kernel radius: 2.5 sigma keeps the 3-tap kernel (the common case, 1/3 cheaper than 5 taps) up to sigma 0.6;
    the table below accounts for the truncated tail."""
    return max(1, int(2.5 * sigma + 0.5))


# A sampled, normalised Gaussian of small sigma has less variance than sigma^2 (sigma 0.41: 0.09, not 1/6): a table
# from the kernel's true variance (truncated at the radius above) back to sigma. Both backends get the same sigma
# and window, so they use the same taps.
_SIGMAS = np.linspace(0.2, 4.0, 761)
_VARIANCES = np.array([_kernel_variance(s, _radius(s)) for s in _SIGMAS])
MIN_BLUR_VARIANCE = 0.005  # below this a blur changes no uint8 pixel: skipped
# The frequency at which the blur matches the chain. A Gaussian of the chain's total variance leaves main-training
# frames 12% too sharp (mean |Laplacian|): bilinear steps damp the highest frequencies more than a Gaussian of the
# same variance. Matching the response near Nyquist, where the Laplacian looks, fits both stages. 0.85 pi was picked
# from 0.5-1.0 pi on 40 frames per stage (main/pre mean |Laplacian| vs PIL: 0.5 pi 1.07/0.99, 0.85 pi 1.02/0.99,
# pi 1.00/0.95); docs/data-parity.md has the measurement.
MATCH_FREQUENCY = 0.85 * math.pi


def _kernel_response(sigma: float, radius: int, w: float) -> float:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return float((k * np.cos(w * x)).sum() / k.sum())


_RESPONSES = np.array([_kernel_response(s, _radius(s), MATCH_FREQUENCY) for s in _SIGMAS])
# Truncated kernels of sigma > 1.39 ripple around a response of 0.003: keep the decreasing part for the inversion
# (extra_blur gives at most sigma 1.39, i.e. a response of 0.003 at MATCH_FREQUENCY: the rare strong enlargements).
_N_RESPONSES = int(np.flatnonzero(np.diff(_RESPONSES) >= 0)[0]) + 1


def gaussian_for_variance(variance: float) -> tuple[float, int]:
    """(sigma, window) of the sampled Gaussian whose variance is `variance` pixels^2; (0, 1) for no blur."""
    if variance < MIN_BLUR_VARIANCE:
        return 0.0, 1
    if variance >= _VARIANCES[-1]:
        sigma = math.sqrt(variance)
    else:
        sigma = float(np.interp(variance, _VARIANCES, _SIGMAS))
    return sigma, 2 * _radius(sigma) + 1

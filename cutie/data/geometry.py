"""Geometric augmentation as 3x3 matrices mapping an OUTPUT pixel to a SOURCE pixel (OpenCV pixel centres).

Every step of a chain is an output->input map, so a chain composes by plain matrix products and each frame is
resampled exactly once. Distributions follow torchvision's RandomAffine / RandomResizedCrop / Resize+RandomCrop
(angles and shears symmetric, so the rotation sign convention does not matter).
"""

from __future__ import annotations

import math

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

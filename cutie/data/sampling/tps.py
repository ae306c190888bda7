"""Our thin-plate-spline warp for pre-training frames: a smooth random displacement field as a dense map.

Random control points of the output are moved by N(0, scale) (in units of the image size); the spline through the
moved points gives, for every output pixel, where to read the source: content at a point moves to its displaced
position. Evaluated exactly on a coarse grid and linearly upsampled (the field is smooth).
"""

from __future__ import annotations

import numpy as np

COARSE_STEP = 8  # pixels between exact spline evaluations


def _kernel(d2: np.ndarray) -> np.ndarray:
    """Thin-plate radial basis r^2 log r^2 of squared distances (0 at 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d2 > 0, d2 * np.log(np.maximum(d2, 1e-20)), 0.0)


def fit(points: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interpolating spline f with f(points[i]) = values[i]; returns (radial weights n*2, affine part 3*2)."""
    n = len(points)
    k = _kernel(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    p = np.concatenate([np.ones((n, 1)), points], axis=1)
    a = np.zeros((n + 3, n + 3))
    a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.T
    b = np.zeros((n + 3, 2))
    b[:n] = values
    sol = np.linalg.lstsq(a, b, rcond=None)[0]  # lstsq: coincident points stay solvable
    return sol[:n], sol[n:]


def evaluate(points: np.ndarray, weights: np.ndarray, affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """f at xy (N*2)."""
    d2 = ((xy[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    return _kernel(d2) @ weights + affine[0] + xy @ affine[1:]


def random_tps_params(rng: np.random.Generator, n_points: int = 12, scale: float = 0.02) -> tuple[np.ndarray, ...]:
    """(dst, src) control points in [0, 1]^2 (x, y): output points dst read the source at src."""
    src = rng.uniform(0.0, 1.0, size=(n_points, 2))
    dst = src + rng.normal(0.0, scale, size=src.shape)
    return dst, src


def _linear_weights(n_out: int, n_in: int) -> np.ndarray:
    """n_out*n_in linear interpolation from n_in samples spanning the same end points (corner-aligned)."""
    pos = np.arange(n_out) * (n_in - 1) / max(1, n_out - 1)
    i0 = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - i0
    out = np.zeros((n_out, n_in), np.float32)
    out[np.arange(n_out), i0] = 1 - w
    out[np.arange(n_out), i0 + 1] = w
    return out


def tps_map(dst: np.ndarray, src: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense (map_x, map_y) float32 H*W in output pixels: output pixel -> pre-spline pixel."""
    weights, affine = fit(dst, src)
    cw, ch = max(2, -(-width // COARSE_STEP) + 1), max(2, -(-height // COARSE_STEP) + 1)
    # Exact values on a coarse grid through the first and last pixel centres, then separable linear upsampling.
    xs = (np.linspace(0, width - 1, cw) + 0.5) / width  # normalised, corner origin
    ys = (np.linspace(0, height - 1, ch) + 0.5) / height
    gx, gy = np.meshgrid(xs, ys)
    f = evaluate(dst, weights, affine, np.stack([gx.ravel(), gy.ravel()], 1)).reshape(ch, cw, 2)
    f = (f * np.array([width, height]) - 0.5).astype(np.float32)  # back to pixel centres
    wy, wx = _linear_weights(height, ch), _linear_weights(width, cw)
    return wy @ f[..., 0] @ wx.T, wy @ f[..., 1] @ wx.T

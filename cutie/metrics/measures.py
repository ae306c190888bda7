"""Per-frame measures of the DAVIS 2017 protocol: region similarity J and boundary F-measure F.

Both follow the DAVIS toolkit (davisvideochallenge/davis2017-evaluation, metrics.py) so the numbers are
comparable with published results: J is the IoU of binary masks (1 when both are empty); F matches 1-pixel
boundary maps within a disk of ceil(0.008 * image diagonal) pixels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

BOUNDARY_TOLERANCE = 0.008  # fraction of the image diagonal, as in the DAVIS toolkit


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J per mask: IoU over the last two axes of boolean masks of equal shape (`...*H*W` -> `...`).
    An empty prediction of an empty object scores 1."""
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape} vs prediction {pred.shape}")
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    inter = np.logical_and(gt, pred).sum(axis=(-2, -1))
    union = np.logical_or(gt, pred).sum(axis=(-2, -1))
    # union 0 means both are empty: a perfect (empty) answer
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary of a binary H*W mask, offset half a pixel towards the origin: a pixel is on the
    boundary when it differs from its right, lower or lower-right neighbour (the last row compares only to
    the right, the last column only downwards, the bottom-right corner never counts), as seg2bmap does."""
    seg = mask.astype(bool)
    right = np.zeros_like(seg)
    down = np.zeros_like(seg)
    diag = np.zeros_like(seg)
    right[:, :-1] = seg[:, 1:]
    down[:-1, :] = seg[1:, :]
    diag[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ right) | (seg ^ down) | (seg ^ diag)
    bmap[-1, :] = seg[-1, :] ^ right[-1, :]
    bmap[:, -1] = seg[:, -1] ^ down[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: int) -> np.ndarray:
    """Disk structuring element of side 2r+1: the offsets with x^2 + y^2 <= r^2 (skimage.morphology.disk)."""
    offsets = np.arange(-radius, radius + 1)
    xx, yy = np.meshgrid(offsets, offsets)
    return (xx**2 + yy**2 <= radius**2).astype(np.uint8)


def boundary_tolerance(height: int, width: int, bound_th: float = BOUNDARY_TOLERANCE) -> int:
    """Match distance in pixels: bound_th itself when >= 1, else ceil(bound_th * diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def boundary_f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUNDARY_TOLERANCE) -> float:
    """F for one H*W frame: harmonic mean of boundary precision (predicted boundary pixels within the
    tolerance of the true boundary) and recall (true boundary pixels within the tolerance of the
    prediction)."""
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"expected two H*W masks of equal shape, got {gt.shape} and {pred.shape}")
    kernel = disk(boundary_tolerance(*gt.shape, bound_th=bound_th))
    gt_b = boundary_map(gt)
    pred_b = boundary_map(pred)
    n_gt = int(gt_b.sum())
    n_pred = int(pred_b.sum())
    # the toolkit's conventions when one side has no boundary at all
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # precision/recall are (1, 0) or (0, 1): F = 0
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), kernel).astype(bool)
    pred_dil = cv2.dilate(pred_b.astype(np.uint8), kernel).astype(bool)
    precision = np.logical_and(pred_b, gt_dil).sum() / n_pred
    recall = np.logical_and(gt_b, pred_dil).sum() / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def mean_recall_decay(values: np.ndarray) -> tuple[float, float, float]:
    """Statistics of one object's per-frame scores (first/last frame already removed): mean, recall (fraction
    of frames above 0.5) and decay (mean of the first quarter minus mean of the last quarter).

    The quarters are the toolkit's 4 bins: boundaries round(linspace(1, n, 5)) - 1, each bin inclusive of
    its right boundary (neighbouring bins share one frame). The toolkit stores the boundaries as uint8,
    which wraps past 255 frames; we keep full integers (identical on DAVIS, whose sequences are shorter)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean(values))
    recall = float(np.mean(values > 0.5))
    ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
    first = values[ids[0] : ids[1] + 1]
    last = values[ids[3] : ids[4] + 1]
    decay = float(np.mean(first) - np.mean(last))
    return mean, recall, decay

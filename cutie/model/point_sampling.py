"""Uncertainty-based point sampling for mask losses (PointRend, Kirillov et al. 2020; as used by Cutie).

The loss is computed on a set of points per frame instead of on every pixel: most points where the
prediction is least certain, the rest uniformly at random. Coordinates are normalised to [0, 1] x [0, 1]
(x first), so the same points index full-resolution logits, stride-16 auxiliary logits and the
full-resolution ground truth alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_at(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values at normalised points.

    values: N*C*H*W; coords: N*P*2 in [0, 1] (x, y). Returns N*C*P.
    """
    grid = coords.unsqueeze(2) * 2.0 - 1.0  # N*P*1*2 in [-1, 1], as grid_sample wants
    return F.grid_sample(values, grid, mode="bilinear", align_corners=False).squeeze(3)


def point_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Higher means less certain. logits: N*C*P with C >= 2 (background first). Returns N*P.

    Several classes: minus the gap between the two largest logits. Background plus one object: minus the
    magnitude of the object logit (the official rule for the binary case, kept so that sampling matches).
    """
    if logits.shape[1] == 2:
        return -logits[:, 1].abs()
    top2 = logits.topk(2, dim=1).values  # N*2*P
    return top2[:, 1] - top2[:, 0]


def uncertain_point_coords(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """Pick num_points points per item of logits (N*C*H*W). Returns N*num_points*2 coordinates in [0, 1].

    Draws int(num_points * oversample_ratio) random candidates, keeps the int(importance_sample_ratio *
    num_points) most uncertain of them and fills the rest with fresh uniform points. Uses torch's global RNG
    (two torch.rand calls, in that order).
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    n = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    candidates = torch.rand(n, num_candidates, 2, device=logits.device)  # N*K*2
    # Uncertainty of the interpolated logits at each candidate, not interpolated uncertainty: a point between
    # a confident positive and a confident negative pixel is itself uncertain.
    uncertainty = point_uncertainty(sample_at(logits, candidates))  # N*K
    top = uncertainty.topk(num_uncertain, dim=1).indices  # N*U
    coords = candidates.gather(1, top.unsqueeze(2).expand(-1, -1, 2))  # N*U*2
    if num_random > 0:
        coords = torch.cat([coords, torch.rand(n, num_random, 2, device=logits.device)], dim=1)
    return coords

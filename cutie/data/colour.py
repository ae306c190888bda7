"""Colour parameter draws (torchvision ColorJitter factor distributions), combined per frame for the recipe."""

from __future__ import annotations

import numpy as np


def jitter_factors(rng: np.random.Generator, strength: float, n: int | None = None) -> np.ndarray | float:
    """ColorJitter's factor: uniform in [max(0, 1 - s), 1 + s]."""
    return rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=n)


def clip_colours(
    rng: np.random.Generator,
    t: int,
    clip: tuple[float, float, float],
    frame: tuple[float, float, float],
    grayscale_p: float = 0.05,
) -> dict[str, np.ndarray]:
    """Per-frame brightness/contrast/saturation = clip factor * frame factor; grayscale drawn once per clip."""
    out = {}
    for key, cs, fs in zip(("brightness", "contrast", "saturation"), clip, frame, strict=True):
        out[key] = (jitter_factors(rng, cs) * jitter_factors(rng, fs, t)).astype(np.float32)
    out["grayscale"] = np.full(t, rng.random() < grayscale_p, dtype=bool)
    return out

"""Colour parameter draws (torchvision ColorJitter factor distributions), combined per frame for the recipe.

Official semantics (hkchengrex/Cutie datasets), which the defaults of the samplers reproduce:
- main training: a clip jitter (0.1, 0.03, 0.03) and grayscale p=0.05, then a "per-frame" jitter (0.1, 0.05, 0.05)
  that the official code draws right after re-seeding with the clip's seed, so it takes the SAME values for every
  frame of a clip: per_frame=False;
- pre-training: a clip jitter (0.1, 0.05, 0.05, hue 0.05) and grayscale p=0.05, then a jitter (0.1, 0.05, 0.05)
  drawn anew for every frame (its seed comes from numpy, which is not re-seeded): per_frame=True, hue=0.05.
"""

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
    per_frame: bool = True,
    hue: float = 0.0,
) -> dict[str, np.ndarray]:
    """Per-frame brightness/contrast/saturation = clip factor * frame factor (the frame factor drawn for each frame,
    or once for the clip when per_frame is False); hue (in turns, ColorJitter's hue_factor: uniform in [-hue, hue])
    and grayscale drawn once per clip."""
    out = {}
    for key, cs, fs in zip(("brightness", "contrast", "saturation"), clip, frame, strict=True):
        frame_f = jitter_factors(rng, fs, t) if per_frame else np.full(t, jitter_factors(rng, fs))
        out[key] = (jitter_factors(rng, cs) * frame_f).astype(np.float32)
    out["hue"] = np.full(t, rng.uniform(-hue, hue) if hue > 0 else 0.0, np.float32)
    out["grayscale"] = np.full(t, rng.random() < grayscale_p, dtype=bool)
    return out

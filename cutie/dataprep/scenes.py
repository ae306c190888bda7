"""Synthetic scenes for the tiny dataset: textured blobs moving over a textured, panning background.

A video is rendered from a list of `Blob`s. Each blob has a wobbly outline (a radius that varies with the angle),
a striped texture fixed to its own coordinates (so it moves and turns with the object), a straight path with a
small wobble, a depth that drifts over time (so the occlusion order between two blobs can flip) and a window of
frames in which it exists. Paths may leave the frame. Everything is drawn from a numpy Generator, so one seed gives
one video.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class Blob:
    radius: float  # mean radius in pixels
    harmonics: np.ndarray  # K amplitudes (relative) of the outline's cosine terms 2..K+1
    phases: np.ndarray  # K phases
    start: np.ndarray  # (x, y) centre at t = 0
    end: np.ndarray  # (x, y) centre at the last frame
    spin: float  # radians per frame
    colours: np.ndarray  # 2*3 float in [0, 255]
    stripe_freq: float  # radians per pixel
    depth0: float
    depth_speed: float
    first: int  # first frame in which the blob exists
    last: int  # last frame in which it exists (inclusive)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour field plus fine noise and a few faint lines. Returns h*w*3 float32."""
    coarse = rng.uniform(30, 225, size=(5, 6, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    lines = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * rng.uniform(0.15, 0.4))
    fine = rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)
    return smooth + 12 * lines[..., None] + fine


def random_blob(
    rng: np.random.Generator,
    h: int,
    w: int,
    t_len: int,
    first: int = 0,
    last: int | None = None,
    leaves: bool = False,
) -> Blob:
    """A blob big enough to survive a 96x96 crop of a ~150 px frame; `leaves`: its path ends outside the frame."""
    radius = rng.uniform(0.17, 0.27) * min(h, w)
    start = np.array([rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h])
    if leaves:
        # Leave through a random side, fully outside by the last frame.
        side = rng.integers(4)
        margin = 1.6 * radius
        end = start.copy()
        end[side % 2] = -margin if side < 2 else (w if side % 2 == 0 else h) + margin
    else:
        end = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
    k = 3
    return Blob(
        radius=float(radius),
        harmonics=rng.uniform(0.04, 0.18, size=k),
        phases=rng.uniform(0, 2 * np.pi, size=k),
        start=start,
        end=end,
        spin=float(rng.uniform(-0.12, 0.12)),
        colours=rng.uniform(0, 255, size=(2, 3)),
        stripe_freq=float(rng.uniform(0.25, 0.7)),
        depth0=float(rng.uniform(0, 1)),
        depth_speed=float(rng.uniform(-0.08, 0.08)),
        first=first,
        last=t_len - 1 if last is None else last,
    )


def blob_pixels(blob: Blob, t: int, t_len: int, xx: np.ndarray, yy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inside-mask (h*w bool) and colour (h*w*3 float32) of a blob at frame t."""
    a = t / max(t_len - 1, 1)
    wobble = np.array([np.sin(0.9 * t), np.cos(0.7 * t)]) * 0.04 * blob.radius
    cx, cy = blob.start * (1 - a) + blob.end * a + wobble
    rot = blob.spin * t
    scale = 1.0 + 0.1 * np.sin(0.5 * t + blob.phases[0])
    dx, dy = xx - cx, yy - cy
    dist = np.hypot(dx, dy)
    ang = np.arctan2(dy, dx) - rot
    outline = np.ones_like(dist)
    for i, (amp, ph) in enumerate(zip(blob.harmonics, blob.phases, strict=True)):
        outline += amp * np.cos((i + 2) * ang + ph)
    inside = dist <= blob.radius * scale * outline
    u = dx * np.cos(rot) + dy * np.sin(rot)  # blob-local coordinates: the texture moves with the blob
    v = -dx * np.sin(rot) + dy * np.cos(rot)
    stripes = 0.5 + 0.5 * np.sin(blob.stripe_freq * u) * np.sign(np.sin(0.15 * v) + 1e-3)
    shade = 1.0 - 0.35 * np.clip(dist / (blob.radius * scale), 0, 1)
    colour = (blob.colours[0] * stripes[..., None] + blob.colours[1] * (1 - stripes[..., None])) * shade[..., None]
    return inside, colour.astype(np.float32)


def render_video(
    rng: np.random.Generator, h: int, w: int, t_len: int, blobs: list[Blob]
) -> tuple[np.ndarray, np.ndarray]:
    """Render frames (T*H*W*3 uint8) and object ids (T*H*W uint8; blob i has id i+1, 0 background)."""
    pad = 12
    bg = _background(rng, h + 2 * pad, w + 2 * pad)
    pan = rng.uniform(-1.0, 1.0, size=2)  # camera pan, pixels per frame
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((t_len, h, w, 3), dtype=np.uint8)
    ids = np.zeros((t_len, h, w), dtype=np.uint8)
    for t in range(t_len):
        ox = int(np.clip(pad + pan[0] * t, 0, 2 * pad))
        oy = int(np.clip(pad + pan[1] * t, 0, 2 * pad))
        img = bg[oy : oy + h, ox : ox + w].copy()
        # Draw far to near: the nearest blob owns a pixel in both image and mask (occlusion).
        order = sorted(range(len(blobs)), key=lambda i: -(blobs[i].depth0 + blobs[i].depth_speed * t))
        for i in order:
            blob = blobs[i]
            if not blob.first <= t <= blob.last:
                continue
            inside, colour = blob_pixels(blob, t, t_len, xx, yy)
            img[inside] = colour[inside]
            ids[t][inside] = i + 1
        img += rng.normal(0, 3, size=img.shape).astype(np.float32)  # sensor noise
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, ids


def render_salient_image(rng: np.random.Generator, h: int, w: int, colours: np.ndarray | None = None):
    """One salient-object image for the static sets: (H*W*3 uint8 image, H*W uint8 mask of 0/255)."""
    blob = random_blob(rng, h, w, 1)
    blob.radius = float(rng.uniform(0.25, 0.38) * min(h, w))
    blob.start = blob.end = np.array([rng.uniform(0.35, 0.65) * w, rng.uniform(0.35, 0.65) * h])
    if colours is not None:
        blob.colours = colours
    frames, ids = render_video(rng, h, w, 1, [blob])
    return frames[0], np.where(ids[0] > 0, 255, 0).astype(np.uint8)

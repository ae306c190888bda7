"""Synthetic training sources in the real on-disk layouts (tests and scripts/benchmark_loader.py).

Objects are flat-coloured ellipses with known colours, so tests can check image/mask alignment after augmentation;
`texture=True` adds smooth noise so JPEG sizes and decode costs resemble real photographs (854x480: about
80 KB, as DAVIS 480p).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from cutie.utils.palette import davis_palette

OBJECT_COLOURS = {  # id -> RGB, far apart (flat colours for alignment tests)
    1: (230, 30, 30),
    2: (30, 200, 30),
    3: (30, 30, 230),
    4: (230, 230, 30),
    5: (230, 30, 230),
    6: (30, 230, 230),
    7: (250, 140, 20),
    8: (140, 20, 250),
}
BACKGROUND = (90, 90, 90)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.normal(0, 25, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    fine = rng.normal(0, 3, size=(h, w, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) + fine


def _save_jpeg(path: str, rgb: np.ndarray, quality: int = 92) -> None:
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


def _save_palette_png(path: str, ids: np.ndarray) -> None:
    im = Image.fromarray(ids, mode="P")
    im.putpalette(davis_palette())
    im.save(path)


def _scene(
    rng: np.random.Generator, h: int, w: int, objects: list[tuple[int, float, float, float, float]], texture: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Image (RGB uint8) and id mask for ellipses (id, cx, cy, rx, ry) in relative units; later ids on top."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = BACKGROUND
    ids = np.zeros((h, w), np.uint8)
    for oid, cx, cy, rx, ry in objects:
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (int(cx * w), int(cy * h)), (max(2, int(rx * w)), max(2, int(ry * h))), 0, 0, 360, 1, -1)
        img[m > 0] = OBJECT_COLOURS[(oid - 1) % len(OBJECT_COLOURS) + 1]
        ids[m > 0] = oid
    if texture:
        img += _texture(rng, h, w)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), ids


def make_video_dataset(
    root: str,
    *,
    videos: int = 3,
    frames: int = 10,
    size: tuple[int, int] = (64, 96),
    object_ids=(1, 2),
    texture: bool = False,
    seed: int = 0,
    empty_first: int = 0,
) -> tuple[str, str]:
    """DAVIS layout root/JPEGImages/<video>/%05d.jpg + root/Annotations/<video>/%05d.png; returns both dirs.
    Objects drift slowly; the first `empty_first` frames of every video have empty masks (and no objects)."""
    rng = np.random.default_rng(seed)
    h, w = size
    img_dir, ann_dir = os.path.join(root, "JPEGImages"), os.path.join(root, "Annotations")
    for v in range(videos):
        os.makedirs(os.path.join(img_dir, f"video{v:03d}"), exist_ok=True)
        os.makedirs(os.path.join(ann_dir, f"video{v:03d}"), exist_ok=True)
        start = rng.uniform(0.3, 0.7, size=(len(object_ids), 2))
        vel = rng.uniform(-0.01, 0.01, size=(len(object_ids), 2))
        radii = rng.uniform(0.12, 0.22, size=(len(object_ids), 2))
        for f in range(frames):
            objs = (
                []
                if f < empty_first
                else [(oid, *(start[k] + vel[k] * f), *radii[k]) for k, oid in enumerate(object_ids)]
            )
            img, ids = _scene(rng, h, w, objs, texture)
            _save_jpeg(os.path.join(img_dir, f"video{v:03d}", f"{f:05d}.jpg"), img)
            _save_palette_png(os.path.join(ann_dir, f"video{v:03d}", f"{f:05d}.png"), ids)
    return img_dir, ann_dir


def make_static_dataset(
    root: str,
    *,
    images: int = 4,
    sizes: tuple[int, int] = (48, 80),
    structure: int = 1,
    texture: bool = False,
    seed: int = 0,
) -> str:
    """Static saliency pairs: structure 1 = root/NAME.jpg + NAME.png, 0 = root/class/N.jpg + N.png (0/255 masks)."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        h, w = (int(x) for x in rng.integers(sizes[0], sizes[1] + 1, size=2))
        folder = root if structure == 1 else os.path.join(root, f"class{i % 2}")
        os.makedirs(folder, exist_ok=True)
        img, ids = _scene(rng, h, w, [(1, *rng.uniform(0.35, 0.65, 2), *rng.uniform(0.15, 0.3, 2))], texture)
        name = f"img{i:04d}" if structure == 1 else str(i)
        _save_jpeg(os.path.join(folder, name + ".jpg"), img)
        Image.fromarray((ids > 0).astype(np.uint8) * 255, mode="L").save(os.path.join(folder, name + ".png"))
    return root

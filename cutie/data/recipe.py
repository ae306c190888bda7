"""What one training clip needs to be rendered: the contract between sampling and the two backends.

The sampler (numpy, CPU) decides everything random about a sample from (seed, epoch, global index) and does all mask
work itself (PNG decode to ids, nearest warps, merge labels, object selection), because masks are small and the
crop-retry rule needs them. What remains for a backend (torch/OpenCV on the CPU, or DALI on the GPU/CPU) is the
image work: decode the JPEG bytes, warp each frame once with its matrix (bilinear, fill = ImageNet mean), apply the
colour parameters, and for a merged clip alpha-composite the second clip over the first.

Conventions (both backends implement exactly these):
- `matrices[t]` (3x3, float64) maps an OUTPUT pixel (x, y, 1) to a SOURCE pixel, OpenCV's convention: pixel centres
  at integer coordinates (cv2.warpPerspective with WARP_INVERSE_MAP). Backends with a corner origin convert.
- Colour, per frame t, on the warped image x (float, RGB in [0, 1]), in this order, clamping to [0, 1] after each step:
    m  = mean over pixels of gray(x)                        gray = 0.299 R + 0.587 G + 0.114 B
    x <- brightness[t] * (m + contrast[t] * (x - m))
    x <- gray(x) + saturation[t] * (x - gray(x))
    if grayscale[t]: x <- gray(x) in all three channels
- Dense maps (pre-training thin-plate-spline frames): when `dense_maps` is not None it replaces `matrices` for the
  whole clip: dense_maps[t, y, x] = (source x, source y), OpenCV's cv2.remap convention (bilinear, same fill).
- Merge: out = alpha[t] * render(second) + (1 - alpha[t]) * render(first); alpha in [0, 1], already warped and
  blurred by the sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # warp fill for images, in RGB [0, 1]


@dataclass
class ImageLayer:
    """One clip's images and how to render them."""

    jpegs: list[bytes]  # T encoded JPEG files
    matrices: np.ndarray  # T*3*3 float64, output pixel -> source pixel
    brightness: np.ndarray  # T float32
    contrast: np.ndarray  # T float32
    saturation: np.ndarray  # T float32
    grayscale: np.ndarray  # T bool
    source_paths: list[str] | None = None  # for error messages (corrupt files)


@dataclass
class ClipRecipe:
    """Everything a backend needs for one sample; masks are final."""

    layers: list[ImageLayer]  # one, or two for a merged clip (second pasted over the first)
    alpha: np.ndarray | None  # T*H*W float32 in [0, 1] for the second layer, None without merge
    cls_gt: np.ndarray  # T*H*W uint8: 0 background, 1..O objects (O <= num_objects)
    num_objects: int
    out_size: tuple[int, int]  # (H, W)
    dense_maps: np.ndarray | None = None  # T*H*W*2 float32 source coordinates (pre-training TPS), else None
    info: dict | None = None  # dataset, video, frame names (logging only)

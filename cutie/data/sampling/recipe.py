"""What one training clip needs to be rendered: the contract between sampling and the two backends.

The sampler (numpy, CPU) decides everything random about a sample from (seed, global index) and does all mask
work itself (PNG decode to ids, nearest warps, merge labels, object selection), because masks are small and the
crop-retry rule needs them. What remains for a backend (torch/OpenCV on the CPU, or DALI on the GPU/CPU) is the
image work: decode the JPEG bytes, warp each frame once with its matrix (bilinear, fill = ImageNet mean), apply the
colour parameters, and alpha-composite the layers.

Conventions (both backends implement exactly these):
- `matrices[t]` (3x3, float64) maps an OUTPUT pixel (x, y, 1) to a SOURCE pixel, OpenCV's convention: pixel centres
  at integer coordinates (cv2.warpPerspective with WARP_INVERSE_MAP). Backends with a corner origin convert.
  The sampler only emits affine matrices (last row 0 0 1), so cv2.warpAffine with the top two rows is equivalent.
- Blur, per frame t, right after the warp: when blur[t] >= geometry.MIN_BLUR_VARIANCE, an isotropic Gaussian of
  variance blur[t] output pixels^2, as the (sigma, window) of geometry.gaussian_for_variance (border: reflect-101).
  It stands for the softening of the official chain's extra resampling steps (geometry.extra_blur), computed for a
  full-size decode; a backend that decodes at reduced size subtracts what that decode already blurred.
- Hue, per frame t, after the blur, when hue[t] != 0 and not grayscale[t]: an exact HSV hue shift as the official
  PIL one (uint8 HSV with the hue on 0..255, shifted by round(256 * hue[t]) modulo 256; render.hue_shift, shared by
  both backends). The official ColorJitter applies its four steps in a random order; hue first is one of them
  (brightness, contrast and saturation leave the HSV hue unchanged up to clipping).
- Colour, per frame t, on the warped image x (float, RGB in [0, 1]), in this order, clamping to [0, 1] after each step:
    m  = mean over pixels of gray(x)                        gray = 0.299 R + 0.587 G + 0.114 B
    x <- brightness[t] * (m + contrast[t] * (x - m))
    x <- gray(x) + saturation[t] * (x - gray(x))
    if grayscale[t]: x <- gray(x) in all three channels
- Dense maps (pre-training thin-plate-spline frames): when a layer's `dense_maps` is not None it replaces that
  layer's `matrices` for the whole clip: dense_maps[t, y, x] = (source x, source y), OpenCV's cv2.remap convention
  (bilinear, same fill). Frames without a spline still get a dense map (their matrix evaluated on the grid).
- Layers are composited in order, each over the result so far (the colour of each layer is applied first):
    out = render(layers[0]);  for k >= 1: out = alpha[k-1] * render(layers[k]) + (1 - alpha[k-1]) * out
  alpha in [0, 1], already warped (and blurred, for main-training merges) by the sampler. A main-training merge has
  two layers (alpha 1*T*H*W); a multi-object pre-training clip has one layer per static image (hard 0/1 alpha).
- JPEG bytes may repeat within a layer (pre-training frames all come from one image): decoding once is allowed.
- Backends may return uint8 (what the official PIL pipeline produced); render_recipe (torch) returns float32 / 255.
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
    source_paths: list[str] | None = None  # T paths, for error messages (corrupt files)
    dense_maps: np.ndarray | None = None  # T*H*W*2 float32 source coordinates (pre-training TPS), else None
    hue: np.ndarray | None = None  # T float32 hue rotation in turns (ColorJitter hue_factor); None = 0
    blur: np.ndarray | None = None  # T float32 Gaussian variance in output pixels^2 after the warp; None = 0


@dataclass
class ClipRecipe:
    """Everything a backend needs for one sample; masks are final."""

    layers: list[ImageLayer]  # L >= 1 layers, composited in order
    alpha: np.ndarray | None  # (L-1)*T*H*W float32 in [0, 1]: alpha[k-1] pastes layers[k]; None when L == 1
    cls_gt: np.ndarray  # T*H*W uint8: 0 background, 1..O objects (O <= num_objects)
    num_objects: int  # O >= 1
    out_size: tuple[int, int]  # (H, W)
    info: dict | None = None  # dataset, video, frame names, global index, skipped bad paths (logging only)

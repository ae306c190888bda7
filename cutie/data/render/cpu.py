"""The torch/CPU backend's renderer: ClipRecipe -> images, with OpenCV on uint8.

Lean on purpose (the loader must keep up on few cores): one decode per distinct JPEG, reduced-size decoding when
the warp shrinks by >= 2 anyway, one warp per frame on 4-channel images (OpenCV's fast SIMD path: about twice as
fast as 3 channels), the recipe's blur as one small Gaussian (3 taps in main training; OpenCV's fixed-point path),
an HSV round trip for the hue (pre-training only), colour on 3 channels through one lookup table (brightness,
contrast) and one 3x3 colour matrix (saturation, grayscale), a pasted layer blurred, coloured and blended only
inside its alpha's bounding box, planes split straight into T*3*H*W. The caller's process should keep freed heap
memory (cutie/utils/host_memory.py).
"""

from __future__ import annotations

import cv2
import numpy as np

from cutie.data.sampling.geometry import gaussian_for_variance, source_scale
from cutie.data.sampling.masks import BadSampleError, decode_jpeg_size
from cutie.data.sampling.recipe import IMAGENET_MEAN, ClipRecipe, ImageLayer

FILL = (*(round(255 * c) for c in IMAGENET_MEAN), 255)  # RGBA
_LUMA = (0.299, 0.587, 0.114)
_GREY = np.array([_LUMA] * 3, np.float32)  # RGB -> grey level in every channel
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def _decode(data: bytes, factor: int, path: str) -> np.ndarray:
    """RGBA uint8 H*W*4, decoded at 1/factor size (libjpeg DCT scaling)."""
    flag = dict(_REDUCED).get(factor, cv2.IMREAD_COLOR)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise BadSampleError(path, "corrupt JPEG (decoder failed)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGBA)


def _reduced_factor(scale: float) -> int:
    for factor, _ in _REDUCED:
        if scale >= factor:
            return factor
    return 1


def _to_reduced(m: np.ndarray, full_wh: tuple[int, int], small_wh: tuple[int, int]) -> np.ndarray:
    """Re-target an output->source map from the full-size image to its reduced decode (pixel centres)."""
    sx, sy = small_wh[0] / full_wh[0], small_wh[1] / full_wh[1]
    s = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1.0]])
    return s @ m


def blur(x: np.ndarray, variance: float) -> np.ndarray:
    """The recipe's Gaussian blur of `variance` pixels^2 (x unchanged when it is too small to matter)."""
    sigma, window = gaussian_for_variance(variance)
    if window == 1:
        return x
    return cv2.GaussianBlur(x, (window, window), sigma, borderType=cv2.BORDER_REFLECT_101)


def hue_shift(rgb: np.ndarray, hue: float) -> np.ndarray:
    """The recipe's hue step on H*W*3 uint8 RGB: PIL's (uint8 HSV, hue on 0..255) shifted by `hue` turns."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(round(256 * hue) % 256)  # numpy's uint8 addition wraps around the circle
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _blur_region(x: np.ndarray, variance: float, region: tuple[int, int, int, int]) -> np.ndarray:
    """blur(x)[region], computed on the region grown by the kernel radius (so its edge sees real neighbours)."""
    x0, y0, w, h = region
    r = gaussian_for_variance(variance)[1] // 2
    if r == 0:
        return x[y0 : y0 + h, x0 : x0 + w]
    gx0, gy0 = max(0, x0 - r), max(0, y0 - r)
    gx1, gy1 = min(x.shape[1], x0 + w + r), min(x.shape[0], y0 + h + r)
    out = blur(x[gy0:gy1, gx0:gx1], variance)
    return out[y0 - gy0 : y0 - gy0 + h, x0 - gx0 : x0 - gx0 + w]


def _colour(
    x: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    grayscale: bool,
    region: tuple[int, int, int, int] | None = None,
    blur_variance: float = 0.0,
) -> np.ndarray:
    """The recipe's blur and colour steps on one warped uint8 RGBA (or RGB) frame -> H*W*3 uint8 RGB; with a region
    (x, y, w, h), only that part is returned (the contrast statistic still comes from the whole frame; the blur
    barely moves a mean, so it is taken before the blur)."""
    r, g, b, _ = cv2.mean(x)
    mean = _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b  # mean of gray(x) (gray is linear)
    if region is not None:
        x = _blur_region(x, blur_variance, region)
    else:
        x = blur(x, blur_variance)
    if x.shape[2] == 4:
        x = cv2.cvtColor(x, cv2.COLOR_RGBA2RGB)  # the 3-channel LUT and transform below are the fast SIMD paths
    # brightness * (m + contrast * (v - m)) is affine in v: one lookup table for all channels (clamped).
    lut = np.clip(brightness * (mean + contrast * (np.arange(256, dtype=np.float32) - mean)), 0, 255)
    x = cv2.LUT(x, (lut + 0.5).astype(np.uint8))
    if grayscale:  # gray(saturation step(x)) == gray(x): every channel becomes the grey level
        return cv2.transform(x, _GREY)
    if saturation != 1.0:  # gray(x) + s * (x - gray(x)) as one 3x3 colour matrix (one rounding, then saturate)
        return cv2.transform(x, (saturation * np.eye(3) + (1.0 - saturation) * _GREY).astype(np.float32))
    return x


def render_layer(
    layer: ImageLayer,
    out_hw: tuple[int, int],
    reduced_decode: bool = True,
    regions: list[tuple[int, int, int, int]] | None = None,
) -> list[np.ndarray | None]:
    """T frames of one layer, each H*W*3 uint8 RGB; with regions, frame t is only its region (x, y, w, h) of the
    output, or None for an empty region (a pasted layer only matters where its alpha is non-zero)."""
    t = len(layer.jpegs)
    out_h, out_w = out_hw
    paths = layer.source_paths or ["<jpeg bytes>"] * t
    # Frames sharing bytes (pre-training) share one decode, at the finest factor any of them needs.
    factors: dict[int, int] = {}
    for i, data in enumerate(layer.jpegs):
        # Dense maps are the frame matrix plus a small spline displacement: the matrix still gives the scale.
        f = _reduced_factor(source_scale(layer.matrices[i])) if reduced_decode else 1
        factors[id(data)] = min(factors.get(id(data), f), f)
    cache: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
    frames = []
    for i, data in enumerate(layer.jpegs):
        if regions is not None and regions[i][2] * regions[i][3] == 0:
            frames.append(None)
            continue
        key = id(data)
        if key not in cache:
            img = _decode(data, factors[key], paths[i])
            full_wh = decode_jpeg_size(data, paths[i]) if factors[key] > 1 else (img.shape[1], img.shape[0])
            cache[key] = (img, full_wh)
        img, full_wh = cache[key]
        if layer.dense_maps is not None:
            dense = layer.dense_maps[i]  # H*W*2 full-size source coordinates
            if factors[key] > 1:
                small_wh = np.array([img.shape[1], img.shape[0]], np.float32)
                scale = small_wh / np.array(full_wh, np.float32)
                dense = (dense + 0.5) * scale - 0.5
            warped = cv2.remap(img, dense, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)
        else:
            m = layer.matrices[i]
            if factors[key] > 1:
                m = _to_reduced(m, full_wh, (img.shape[1], img.shape[0]))
            warped = cv2.warpAffine(
                img,
                m[:2],
                (out_w, out_h),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=FILL,
            )
        variance = 0.0 if layer.blur is None else float(layer.blur[i])
        if factors[key] > 1 and variance > 0:
            # A decode at 1/k size already blurred (k^2 - 1) / 4 source pixels^2 (the DCT scaling ~ a k-box, and
            # bilinear on the coarser grid): the recipe's variance is for a full-size decode.
            k = factors[key]
            variance -= (k * k - 1) / 4 / abs(float(np.linalg.det(layer.matrices[i][:2, :2])))
        hue = 0.0 if layer.hue is None or layer.grayscale[i] else float(layer.hue[i])
        if hue != 0.0:  # the hue step needs the whole blurred frame (the contrast mean is taken after it)
            warped = hue_shift(cv2.cvtColor(blur(warped, variance), cv2.COLOR_RGBA2RGB), hue)
            variance = 0.0
        frames.append(
            _colour(
                warped,
                float(layer.brightness[i]),
                float(layer.contrast[i]),
                float(layer.saturation[i]),
                bool(layer.grayscale[i]),
                None if regions is None else regions[i],
                variance,
            )
        )
    return frames


def render_recipe_uint8(recipe: ClipRecipe, reduced_decode: bool = True, out: np.ndarray | None = None) -> np.ndarray:
    """T*3*H*W uint8 RGB of a whole recipe (layers composited in order), written into `out` when given."""
    frames = render_layer(recipe.layers[0], recipe.out_size, reduced_decode)
    for k, layer in enumerate(recipe.layers[1:]):
        # Blend only inside the box where the pasted layer has weight (outside it the result is the lower layer).
        boxes = [cv2.boundingRect((a > 0).view(np.uint8)) for a in recipe.alpha[k]]
        top = render_layer(layer, recipe.out_size, reduced_decode, regions=boxes)
        for t, (x0, y0, w, h) in enumerate(boxes):
            if top[t] is None:
                continue
            box = (slice(y0, y0 + h), slice(x0, x0 + w))
            a = recipe.alpha[k, t][box]
            frames[t][box] = cv2.blendLinear(top[t], frames[t][box], a, 1.0 - a)
    if out is None:
        out = np.empty((len(frames), 3, *recipe.out_size), np.uint8)  # T*3*H*W
    for t, frame in enumerate(frames):
        out[t, 0], out[t, 1], out[t, 2] = cv2.split(frame)
    return out


def render_recipe(recipe: ClipRecipe, reduced_decode: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(rgb T*3*H*W float32 in [0, 1], cls_gt T*H*W uint8): the reference rendering of a recipe.

    reduced_decode=False decodes every JPEG at full size (slower; for comparisons with other backends)."""
    rgb = render_recipe_uint8(recipe, reduced_decode).astype(np.float32) / 255.0
    return rgb, recipe.cls_gt

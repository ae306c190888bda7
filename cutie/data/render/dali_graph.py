"""The DALI graph that renders ClipRecipes: decode, warp, colour, composite (recipe.py is the contract).

The source (a parallel, per-sample `fn.external_source`) hands over one packed recipe per sample: `pack_recipe`
turns a ClipRecipe into flat numpy arrays in the order of `SourceLayout.names`. The graph is fixed; what differs
per sample is routed with DALI conditionals (`enable_conditionals=True`), so a branch runs only for the samples
that take it:
- layer k of a sample is rendered only when present (k < L); layers past L cost nothing (measured: cheaper than
  always rendering a second layer with alpha 0, see docs/benchmarks.md);
- a layer with matrices: T JPEG inputs -> `fn.decoders.image` (mixed on a GPU, cpu otherwise) ->
  `fn.experimental.warp_perspective` per frame with pixel_origin="center" (OpenCV's convention, so the sampler's
  matrices are used as they are; checked equal to cv2.warpPerspective) -> `fn.stack` to FHWC. Warping frame by
  frame before the stack also accepts frames of different source sizes; then `fn.gaussian_blur` per frame with the
  recipe's blur as the (sigma, window) of geometry.gaussian_for_variance (window 1: no blur), the same taps as the
  torch backend's cv2.GaussianBlur;
- a layer with dense maps (pre-training thin-plate splines): `fn.experimental.remap` is GPU-only and fills 0, so
  the source decodes and remaps those frames on the CPU (cv2, in the parallel source workers) and hands over the
  warped (blurred, hue-shifted) uint8 frames; the graph only applies colour and compositing to them. The same for
  layers with a hue step (below). A repeated JPEG is decoded once.
Colour (recipe.py's order), per frame on FHWC uint8:
  m = mean grey of the warped frame (`fn.reductions.mean` of the channels, weighted 0.299/0.587/0.114),
  `fn.brightness_contrast(brightness=b, contrast=c, contrast_center=m)`,
  `fn.hsv(saturation=s * (1 - grayscale))`: DALI's hsv is the linear map grey + s * (x - grey) with the same
  luma weights (within 1e-3). Folding the grayscale flag into the saturation factor differs from recipe.py's
  gray(clamp(...)) only where s > 1 made the saturation step clip, which is negligible at the jitter strengths used.
  DALI's hue operators (`fn.hue`, `fn.hsv(hue=)`) are a linear YIQ rotation, not the official HSV shift (on the
  saturated objects of the parity data it moved hues 1.3x too far), so layers with a hue step (pre-training) are
  rendered in the source like dense layers, with the torch backend's exact `render.hue_shift`.
  Both ops write uint8, which rounds and saturates (recipe.py's clamps) after each step, as the torch backend's
  uint8 steps do; a float chain with one final cast cost ~10% more CPU time and was further from that backend.
  On a GPU the per-frame mean lives on the device; it is moved to the CPU (`.cpu()`, DALI's dynamic executor) to
  serve as an argument.
Compositing: out <- round(alpha_k * layer_k + (1 - alpha_k) * out) in float, alpha as T*H*W*1 uint8 (/255).
Output `rgb` is T*3*H*W uint8 (like the torch backend's frames: the loader divides by 255 on the training device,
and the transfer is 4x smaller than float); `cls_gt` (T*H*W uint8, final from the sampler, never decoded by DALI;
on the GPU with the frames), `num_objects`, `bad_paths` (the files the source skipped, newline-joined bytes)
and `index` (the global sample index) pass through.

Corrupt JPEGs: DALI's decoder fails the whole batch on a truncated stream or an invalid marker (OpenCV only
warns), so the source screens every JPEG with `jpeg_problem` (structure only, ~0.04 ms per 170 KB) and replaces the
sample; see dali_loader.py for the rare file that passes the screen and still fails in DALI.

GPU: the same graph with device_id set and decoders on "mixed". Implemented, not measured on a GPU here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from cutie.data.render.cpu import blur, hue_shift
from cutie.data.sampling.geometry import gaussian_for_variance
from cutie.data.sampling.masks import BadSampleError
from cutie.data.sampling.recipe import IMAGENET_MEAN, ClipRecipe, ImageLayer

_FILL_255 = [255.0 * v for v in IMAGENET_MEAN]  # warp fill in uint8 units
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class SourceLayout:
    """Shape of the packed samples for one pipeline: frames per clip, output size, most layers per clip."""

    seq_length: int
    out_size: tuple[int, int]  # (H, W)
    max_layers: int  # 1, or 2 with merges (main training), or more for multi-object pre-training

    def fields(self) -> list[tuple[str, str]]:
        """(name, kind) of every source output, in order; kind picks the DALI dtype and layout."""
        fields: list[tuple[str, str]] = []
        for k in range(self.max_layers):
            fields += [(f"jpeg{k}_{t}", "jpeg") for t in range(self.seq_length)]
            fields += [(f"matrices{k}", "float"), (f"colour{k}", "float"), (f"blur{k}", "float"), (f"cpu{k}", "bool")]
            fields += [(f"frames{k}", "frames")]
            if k > 0:
                fields += [(f"present{k}", "bool"), (f"alpha{k}", "alpha")]
        return fields + [("cls_gt", "uint8"), ("num_objects", "int32"), ("bad_paths", "uint8"), ("index", "int64")]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.fields()]

    def dtypes(self) -> list:
        from nvidia.dali import types

        kinds = {
            "jpeg": types.UINT8,
            "float": types.FLOAT,
            "bool": types.BOOL,
            "frames": types.UINT8,
            "alpha": types.UINT8,
            "uint8": types.UINT8,
            "int32": types.INT32,
            "int64": types.INT64,
        }
        return [kinds[kind] for _, kind in self.fields()]

    def layouts(self) -> list[str]:
        return ["FHWC" if kind in ("frames", "alpha") else "" for _, kind in self.fields()]

    def bytes_per_sample(self) -> int:
        """Shared-memory hint for one packed sample: 256 KiB per JPEG (or remapped frame), the alphas and masks.
        DALI grows a slot when a sample needs more; an oversized hint multiplies by workers x batches in flight."""
        h, w = self.out_size
        t, n = self.seq_length, self.max_layers
        return n * t * (256 << 10) + (n - 1) * t * h * w + t * h * w + (64 << 10)


@cache
def _placeholder_jpeg() -> np.ndarray:
    """A valid 8x8 JPEG for inputs a sample does not use (absent or CPU-rendered layers): never decoded."""
    ok, enc = cv2.imencode(".jpg", np.full((8, 8, 3), 128, np.uint8))
    assert ok
    return np.frombuffer(enc.tobytes(), np.uint8)


def _decode_rgb(data: bytes, path: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BadSampleError(path, "corrupt JPEG (decoder failed)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# Markers that may follow 0xFF after the first start-of-scan: stuffing (00), fill (FF), restarts (D0-D7), end of
# image (D9), and the tables/scans/comments/APPn between the scans of a progressive JPEG.
_SCAN_OK = np.zeros(256, bool)
_SCAN_OK[[0x00, 0xFF, 0xD9, 0xC4, 0xCC, 0xDA, 0xDB, 0xDD, 0xFE]] = True
_SCAN_OK[0xD0:0xD8] = True
_SCAN_OK[0xE0:0xF0] = True


def jpeg_problem(data: bytes) -> str | None:
    """Why DALI's decoder would reject these JPEG bytes, from a cheap structural check (no decode), else None.

    DALI fails the whole batch on a truncated stream or an invalid marker (checked with its CPU decoder), while
    OpenCV decodes such files with a warning; this catches both: start/end-of-image markers and every 0xFF in the
    entropy-coded data followed by a legal byte. Damage that keeps the structure intact decodes (with a warning)."""
    b = np.frombuffer(data, np.uint8)
    if b.size < 4 or b[0] != 0xFF or b[1] != 0xD8:
        return "not a JPEG (no start-of-image marker)"
    tail = b[-64:].tobytes()  # some writers pad after the end-of-image marker
    if b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    sos = data.find(b"\xff\xda")
    if sos < 0:
        return "JPEG without image data (no start-of-scan marker)"
    ff = np.flatnonzero(b[sos + 2 : -1] == 0xFF) + sos + 3  # positions of the bytes that follow each 0xFF
    if ff.size and not _SCAN_OK[b[ff]].all():
        return "corrupt JPEG (invalid marker in the image data)"
    return None


def renders_on_cpu(layer: ImageLayer) -> bool:
    """Layers the source renders up to the colour step (see the module docstring): dense maps or a hue step."""
    has_hue = layer.hue is not None and bool(np.any((np.asarray(layer.hue) != 0) & ~np.asarray(layer.grayscale)))
    return layer.dense_maps is not None or has_hue


def cpu_layer_frames(layer: ImageLayer, out_hw: tuple[int, int]) -> np.ndarray:
    """A layer's frames decoded, warped (matrices or dense maps), blurred and hue-shifted on the CPU, as the torch
    backend does: T*H*W*3 uint8 (bilinear, ImageNet-mean fill)."""
    decoded: dict[bytes, np.ndarray] = {}  # pre-training frames repeat one image: decode it once
    frames = []
    for t, data in enumerate(layer.jpegs):
        if data not in decoded:
            path = layer.source_paths[t] if layer.source_paths else f"frame {t}"
            decoded[data] = _decode_rgb(data, path)
        if layer.dense_maps is not None:
            dmap = np.ascontiguousarray(layer.dense_maps[t], dtype=np.float32)  # H*W*2 (source x, source y)
            warped = cv2.remap(
                decoded[data], dmap, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=_FILL_255
            )
        else:
            warped = cv2.warpAffine(
                decoded[data],
                np.asarray(layer.matrices[t], np.float64)[:2],
                (out_hw[1], out_hw[0]),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=_FILL_255,
            )
        if layer.blur is not None:
            warped = blur(warped, float(layer.blur[t]))
        if layer.hue is not None and layer.hue[t] != 0 and not layer.grayscale[t]:
            warped = hue_shift(warped, float(layer.hue[t]))
        frames.append(warped)
    return np.stack(frames)


def _colour_params(layer: ImageLayer) -> np.ndarray:
    """T*3 float32: brightness, contrast, saturation with the grayscale flag folded in (0 = grey)."""
    sat = np.where(np.asarray(layer.grayscale, bool), 0.0, np.asarray(layer.saturation, np.float64))
    return np.stack([layer.brightness, layer.contrast, sat], axis=1).astype(np.float32)


def _blur_params(layer: ImageLayer | None, t: int) -> np.ndarray:
    """T*2 float32: the Gaussian (sigma, window) of each frame's blur; window 1 = none."""
    out = np.zeros((t, 2), np.float32)
    out[:, 1] = 1
    if layer is not None and layer.blur is not None:
        out[:] = [gaussian_for_variance(float(v)) for v in layer.blur]
    return out


def pack_recipe(recipe: ClipRecipe, layout: SourceLayout, index: int = -1, bad_paths: list[str] = ()) -> tuple:
    """A ClipRecipe as the source's flat arrays (order of `layout.names`). Dense-map layers are rendered here (CPU)
    and raise BadSampleError for an undecodable JPEG; `bad_paths` (files skipped for this sample) travel along."""
    t_len, (h, w) = layout.seq_length, layout.out_size
    n_layers = len(recipe.layers)
    if tuple(recipe.out_size) != (h, w) or recipe.cls_gt.shape != (t_len, h, w):
        raise ValueError(
            f"recipe is {recipe.cls_gt.shape} at out_size {recipe.out_size}; this DALI pipeline was built for "
            f"{t_len} frames of {h}x{w} (crop_size / seq_length of the stage)"
        )
    if not 1 <= n_layers <= layout.max_layers:
        raise ValueError(f"recipe has {n_layers} layers; the DALI pipeline takes at most {layout.max_layers}")
    out: list[np.ndarray] = []
    for k in range(layout.max_layers):
        layer = recipe.layers[k] if k < n_layers else None
        on_cpu = layer is not None and renders_on_cpu(layer)
        if layer is None or on_cpu:
            out += [_placeholder_jpeg()] * t_len
        else:
            if len(layer.jpegs) != t_len:
                raise ValueError(f"layer {k} has {len(layer.jpegs)} JPEGs for {t_len} frames")
            out += [np.frombuffer(b, np.uint8) for b in layer.jpegs]
        if layer is None:
            out += [np.tile(np.eye(3, dtype=np.float32), (t_len, 1, 1)), np.ones((t_len, 3), np.float32)]
        else:
            out += [np.asarray(layer.matrices, np.float32).reshape(t_len, 3, 3), _colour_params(layer)]
        out += [_blur_params(None if on_cpu else layer, t_len)]  # CPU-rendered frames come blurred
        out += [np.array(on_cpu), cpu_layer_frames(layer, (h, w)) if on_cpu else np.zeros((t_len, 1, 1, 3), np.uint8)]
        if k > 0:
            present = layer is not None
            # uint8 alpha (in 1/255 steps) keeps shared memory 4x smaller; the blend error is <= 0.5 grey levels.
            if present:
                alpha = (np.asarray(recipe.alpha[k - 1], np.float32)[..., None] * 255.0 + 0.5).astype(np.uint8)
            else:
                alpha = np.zeros((t_len, 1, 1, 1), np.uint8)
            out += [np.array(present), alpha]
    out += [
        np.ascontiguousarray(recipe.cls_gt, dtype=np.uint8),
        np.array(recipe.num_objects, np.int32),
        np.frombuffer("\n".join(bad_paths).encode(), np.uint8),
        np.array(index, np.int64),
    ]
    return tuple(out)


def _render_layer(inputs: dict, k: int, layout: SourceLayout, gpu: bool):
    """One layer's frames with colour applied: T*H*W*3 uint8."""
    from nvidia.dali import fn, types

    t_len, (h, w) = layout.seq_length, layout.out_size
    if inputs[f"cpu{k}"]:
        frames = inputs[f"frames{k}"]
        if gpu:
            frames = frames.gpu()
    else:
        mats = inputs[f"matrices{k}"]
        blur_sw = inputs[f"blur{k}"]  # T*2: sigma, window
        windows = fn.cast(blur_sw[:, 1], dtype=types.INT32)
        warped = []
        for t in range(t_len):
            jpeg = inputs[f"jpeg{k}_{t}"]
            if gpu:  # nvJPEG with the CPU decoders' chroma upsampling (libjpeg-turbo's, OpenCV's: the torch backend)
                img = fn.decoders.image(jpeg, device="mixed", output_type=types.RGB, jpeg_fancy_upsampling=True)
            else:
                img = fn.decoders.image(jpeg, device="cpu", output_type=types.RGB)
            frame = fn.experimental.warp_perspective(
                img,
                matrix=mats[t],
                size=[h, w],
                fill_value=_FILL_255,
                interp_type=types.INTERP_LINEAR,
                pixel_origin="center",  # OpenCV's pixel centres, as the sampler's matrices
            )
            warped.append(fn.gaussian_blur(frame, sigma=blur_sw[t, 0], window_size=windows[t]))
        frames = fn.stack(*warped, axis_name="F")  # T*H*W*3 uint8
    colour = inputs[f"colour{k}"]  # T*3 (brightness, contrast, saturation)
    chan_mean = fn.reductions.mean(frames, axes=[1, 2], dtype=types.FLOAT)  # T*3, uint8 units
    grey_mean = chan_mean[:, 0] * _LUMA[0] + chan_mean[:, 1] * _LUMA[1] + chan_mean[:, 2] * _LUMA[2]  # T
    if gpu:
        grey_mean = grey_mean.cpu()  # arguments live on the CPU
    # uint8 in and out: each step rounds and saturates (the clamps of recipe.py), like the torch backend's uint8
    # steps; a float chain plus a final cast cost ~25% more CPU time here for < 0.2 grey levels of difference.
    x = fn.brightness_contrast(
        frames,
        brightness=fn.per_frame(colour[:, 0]),
        contrast=fn.per_frame(colour[:, 1]),
        contrast_center=fn.per_frame(grey_mean),
    )
    return fn.hsv(x, saturation=fn.per_frame(colour[:, 2]), dtype=types.UINT8)  # T*H*W*3 uint8


def clip_graph(source: Callable, layout: SourceLayout, gpu: bool, parallel: bool = True) -> tuple:
    """The graph body (inside a pipeline with conditionals enabled); outputs in the order of OUTPUT_NAMES."""
    from nvidia.dali import fn, types

    names = layout.names
    nodes = fn.external_source(
        source=source,
        num_outputs=len(names),
        batch=False,
        parallel=parallel,
        dtype=layout.dtypes(),
        layout=layout.layouts(),
        bytes_per_sample_hint=layout.bytes_per_sample() if parallel else None,
    )
    inputs = {name: nodes[i] for i, name in enumerate(names)}
    out = _render_layer(inputs, 0, layout, gpu)  # T*H*W*3 uint8
    for k in range(1, layout.max_layers):
        if inputs[f"present{k}"]:  # a per-sample branch: absent layers cost nothing
            a = inputs[f"alpha{k}"]  # T*H*W*1 uint8, 255 = fully the upper layer
            if gpu:
                a = a.gpu()
            a = a * (1.0 / 255.0)  # float: keeps the blend out of uint8 arithmetic (no wrap-around)
            blend = _render_layer(inputs, k, layout, gpu) * a + out * (1.0 - a)
            out = fn.cast(blend, dtype=types.UINT8)  # rounds; a convex blend stays in range
    rgb = fn.transpose(out, perm=[0, 3, 1, 2])  # T*3*H*W uint8
    # On a GPU the masks go to the device inside the pipeline (DALI copies from its pinned buffers, ahead of the
    # step): a copy from pageable memory on the training stream would wait for the step the GPU is running.
    cls_gt = inputs["cls_gt"].gpu() if gpu else inputs["cls_gt"]
    return rgb, cls_gt, inputs["num_objects"], inputs["bad_paths"], inputs["index"]


OUTPUT_NAMES = ["rgb", "cls_gt", "num_objects", "bad_paths", "index"]


def build_pipeline(
    source: Callable,
    layout: SourceLayout,
    *,
    batch_size: int,
    device_id: int | None,
    num_threads: int = 2,
    py_num_workers: int = 2,
    seed: int = 0,
    prefetch_queue_depth: int = 2,
    py_start_method: str = "fork",
    parallel: bool = True,
):
    """A built pipeline: device_id None renders on the CPU, an int on that GPU (same graph)."""
    from nvidia.dali import pipeline_def

    @pipeline_def(enable_conditionals=True)
    def _clip_pipeline():
        return clip_graph(source, layout, gpu=device_id is not None, parallel=parallel)

    kwargs = {}
    if parallel:
        kwargs = dict(py_num_workers=py_num_workers, py_start_method=py_start_method)
    pipe = _clip_pipeline(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch_queue_depth,
        **kwargs,
    )
    if parallel:
        pipe.start_py_workers()  # before any CUDA call when forking (NVIDIA/DALI#3182)
    pipe.build()
    return pipe

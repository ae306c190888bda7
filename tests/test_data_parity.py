"""Training-distribution parity with the official loader (docs/data-parity.md), on small generated sources.

- main training: the colour factors of a clip are the same in every frame (the official code draws its
  "per-frame" jitter right after re-seeding with the clip's seed);
- pre-training: the frame jitter varies per frame, the hue jitter (ColorJitter hue=0.05) is one per clip and
  moves object hues by the official spread;
- sharpness: mean |Laplacian| of our one-warp frames is within 5% of the official step-by-step PIL resampling
  (cutie/testing/pil_reference.py) applied to the same source frames with the same sampled parameters.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cutie.data.loaders.build import make_recipe_source
from cutie.data.render.cpu import render_layer, render_recipe_uint8
from cutie.data.sampling.recipe import ImageLayer
from cutie.testing.pil_reference import hue_offset, sharpness
from cutie.testing.synthetic import make_static_dataset, make_video_dataset

MAIN = {"seq_length": 4, "num_objects": 2, "crop_size": [48, 48], "merge_probability": 0.5}
PRE = {"seq_length": 3, "num_objects": 1, "crop_size": [48, 48]}


def _data_cfg(video: str | None, static: str | None) -> dict:
    vos = {
        video: {
            "image_directory": f"{video}/JPEGImages",
            "mask_directory": f"{video}/Annotations",
            "multiplier": 1,
            "frame_interval": 1,
            "subset": None,
            "empty_masks": None,
        }
    }
    return {
        "vos_datasets": vos if video else {},
        "image_datasets": {static: {"directory": static, "data_structure": 1, "multiplier": 1}} if static else {},
        "main_training": {"datasets": [video] if video else []},
        "pre_training": {"datasets": [static] if static else []},
    }


def _source(root: Path, stage: str, stage_cfg: dict):
    video, static = ("v", None) if stage == "main_training" else (None, "s")
    return make_recipe_source(
        _data_cfg(video, static),
        stage_cfg,
        stage=stage,
        data_root=str(root),
        cache_root=str(root / "cache"),
        seed=11,
        world_size=1,
        batch_size=1,
        total_iterations=1000,
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parity")
    make_video_dataset(str(root / "v"), videos=2, frames=10, size=(60, 90), object_ids=(1, 2))
    make_static_dataset(str(root / "s"), images=6, sizes=(50, 90))
    return root


def test_main_training_colour_is_one_draw_per_clip(root: Path) -> None:
    source = _source(root, "main_training", MAIN)
    try:
        factors = []
        for g in range(30):
            for layer in source(g).layers:  # merged clips too: each layer has its own draw
                for key in ("brightness", "contrast", "saturation", "hue"):
                    values = getattr(layer, key)
                    assert np.all(values == values[0]), (g, key, values)
                factors.append(layer.brightness[0])
        assert np.std(factors) > 0.03  # still jittered from clip to clip: [0.9, 1.1]^2
    finally:
        source.close()


def test_pre_training_frame_jitter_varies_and_hue_is_per_clip(root: Path) -> None:
    source = _source(root, "pre_training", PRE)
    try:
        hues = []
        for g in range(200):
            layer = source(g).layers[0]
            assert np.all(layer.hue == layer.hue[0]) and np.all(layer.grayscale == layer.grayscale[0])
            assert len(set(layer.brightness.tolist())) == PRE["seq_length"]  # a frame jitter per frame
            hues.append(layer.hue[0])
        deg = 360 * np.abs(hues)
        assert deg.max() <= 18.0 + 1e-3 and 7.5 < np.median(deg) < 10.5  # uniform in [-18, 18] degrees: median 9
    finally:
        source.close()


def _neutral(layer: ImageLayer) -> ImageLayer:
    t = len(layer.jpegs)
    ones = np.ones(t, np.float32)
    return ImageLayer(
        jpegs=layer.jpegs,
        matrices=layer.matrices,
        brightness=ones,
        contrast=ones,
        saturation=ones,
        grayscale=np.zeros(t, bool),
        dense_maps=layer.dense_maps,
        blur=layer.blur,
    )


def test_pre_training_hue_offsets_have_the_official_spread(root: Path) -> None:
    """Object hue after the colour steps vs the same frame without them: the official clips measured a median
    |offset| of 8.6 degrees with 81% beyond 3 degrees; the bounds are those of docs/data-parity.md."""
    source = _source(root, "pre_training", PRE)
    try:
        offsets = []
        for g in range(120):
            recipe = source(g)
            layer = recipe.layers[0]
            if layer.grayscale[0]:
                continue
            inner = cv2.erode((recipe.cls_gt[0] > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            if inner.sum() < 20:
                continue
            got = render_layer(layer, recipe.out_size)[0][inner]
            ref = render_layer(_neutral(layer), recipe.out_size)[0][inner]
            offsets.append(hue_offset(np.median(ref, 0), np.median(got, 0)))
        off = np.abs(offsets)
        assert len(off) > 60
        assert 6.5 <= np.median(off) <= 11.0, np.median(off)
        assert (off > 3.0).mean() >= 0.65, (off > 3.0).mean()
    finally:
        source.close()


def test_hue_step_is_an_exact_hsv_shift() -> None:
    """hue_shift moves the HSV hue of every colour by 360 * hue degrees (PIL's uint8 HSV: 1.4 degree steps) and
    keeps its saturation and value, unlike a linear YIQ rotation (DALI's hue operators)."""
    from cutie.data.render.cpu import hue_shift

    colours = np.array([[[230, 30, 30], [30, 200, 30], [30, 30, 230], [230, 230, 30], [120, 90, 60]]], np.uint8)
    for hue in (0.05, -0.05, 0.02):
        moved = hue_shift(colours, hue)
        for a, b in zip(colours[0], moved[0], strict=True):
            assert abs(hue_offset(a.astype(float), b.astype(float)) - 360 * hue) < 2.5, (a, b, hue)
            assert abs(int(b.max()) - int(a.max())) <= 2  # HSV value kept
    round_trip = cv2.cvtColor(cv2.cvtColor(colours, cv2.COLOR_RGB2HSV_FULL), cv2.COLOR_HSV2RGB_FULL)
    assert np.array_equal(hue_shift(colours, 0.0), round_trip)


@pytest.fixture(scope="module")
def textured(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], list[bytes]]:
    """JPEG bytes of textured frames: videos at 240x427 (854x480 halved) and static images of 300-800 px (the
    pre-training match depends on content scale: at half these sizes ours came out 6% softer, see the docs)."""
    root = tmp_path_factory.mktemp("tex")
    make_video_dataset(str(root / "v"), videos=2, frames=6, size=(240, 427), object_ids=(1, 2, 3), texture=True)
    make_static_dataset(str(root / "s"), images=8, sizes=(300, 800), texture=True)
    videos = [p.read_bytes() for p in sorted((root / "v" / "JPEGImages").rglob("*.jpg"))]
    statics = [p.read_bytes() for p in sorted((root / "s").glob("*.jpg"))]
    return videos, statics


@pytest.mark.parametrize("stage", ["main", "pre"])
def test_sharpness_matches_the_official_two_step_pil_chain(textured, stage: str) -> None:
    """Same frames, same sampled parameters: ours (one bilinear warp + the recipe's blur) vs PIL step by step
    (main: affine on the full frame, then crop + bilinear resize; pre-training: two affines, resize of the short
    side, padded crop, spline). Without the blur ours is visibly sharper, so the check can fail."""
    videos, statics = textured
    files, out_hw = (videos, (240, 240)) if stage == "main" else (statics, (384, 384))
    s = sharpness(files, stage, out_hw, frames=24, seed=5)
    assert abs(s.ours / s.reference - 1) <= 0.05, s
    assert s.ours_without_blur / s.reference > 1.2  # the one-warp frames without the blur


def test_recipes_carry_the_blur_and_both_stages_render(root: Path) -> None:
    for stage, cfg in (("main_training", MAIN), ("pre_training", PRE)):
        source = _source(root, stage, cfg)
        try:
            recipe = source(0)
            for layer in recipe.layers:
                assert layer.blur is not None and np.all(layer.blur > 0)  # every official chain softens
            rgb = render_recipe_uint8(recipe)
            assert rgb.shape == (cfg["seq_length"], 3, 48, 48)
        finally:
            source.close()

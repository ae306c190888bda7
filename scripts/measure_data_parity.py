#!/usr/bin/env python
"""Training-distribution statistics of our loader against the official one (docs/data-parity.md).

    python scripts/measure_data_parity.py [--clips 200] [--frames 60] [--seed 0]

On a generated dataset like the one of the official comparison (8 videos x 40 frames of 854x480 with 1-4 moving
textured objects; 40 textured static images of 300-800 px), with the real samplers and the torch renderer:
- main training: within-clip frame-to-frame brightness change (mean |b_t / b_t-1 - 1| of the rendered frames'
  mean luma over the same frames rendered without colour steps) and the share of clips whose frames share one
  colour jitter (recipe factors equal in every frame);
- pre-training: |hue offset| of the first frame's object (median colour with vs without the colour steps, HSV
  degrees): median and share beyond 3 degrees (grayscale clips skipped);
- sharpness, both stages: mean |Laplacian| of the luma of our frames (one warp + the recipe's blur, and without
  the blur) vs the official step-by-step PIL resampling of the same source frames with the same sampled
  parameters (cutie/testing/pil_reference.py), over pixels both show.
The last line is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from cutie.data.loaders.build import make_recipe_source
from cutie.data.render.cpu import render_layer
from cutie.data.sampling.recipe import ImageLayer
from cutie.testing.pil_reference import hue_offset, luma, sharpness
from cutie.testing.synthetic import make_static_dataset, make_video_dataset

STAGES = {  # official stage settings (cutie/config/train_config.yaml)
    "main_training": {"seq_length": 8, "num_objects": 3, "crop_size": [480, 480], "merge_probability": 0.5},
    "pre_training": {"seq_length": 3, "num_objects": 1, "crop_size": [384, 384]},
}
OBJECTS = [(1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (2, 5), (3,), (4, 6, 7), (5, 6, 7, 8)]  # 1-4 objects per video


def generate(root: str) -> tuple[str, str]:
    videos = os.path.join(root, "videos")
    for i, ids in enumerate(OBJECTS):
        make_video_dataset(videos, videos=1, frames=40, size=(480, 854), object_ids=ids, texture=True, seed=i)
        for sub in ("JPEGImages", "Annotations"):  # make_video_dataset names its videos from 000
            os.rename(os.path.join(videos, sub, "video000"), os.path.join(videos, sub, f"v{i}"))
    static = make_static_dataset(os.path.join(root, "static"), images=40, sizes=(300, 800), texture=True)
    return videos, static


def data_cfg(videos: str, static: str) -> dict:
    return {
        "vos_datasets": {
            "V": {
                "image_directory": os.path.join(videos, "JPEGImages"),
                "mask_directory": os.path.join(videos, "Annotations"),
                "multiplier": 1,
                "frame_interval": 1,
                "subset": None,
                "empty_masks": None,
            }
        },
        "image_datasets": {"S": {"directory": static, "data_structure": 1, "multiplier": 1}},
        "main_training": {"datasets": ["V"]},
        "pre_training": {"datasets": ["S"]},
    }


def neutral(layer: ImageLayer) -> ImageLayer:
    """The same layer (geometry, blur) without its colour steps."""
    t = len(layer.jpegs)
    one = np.ones(t, np.float32)
    return ImageLayer(
        jpegs=layer.jpegs,
        matrices=layer.matrices,
        brightness=one,
        contrast=one,
        saturation=one,
        grayscale=np.zeros(t, bool),
        dense_maps=layer.dense_maps,
        blur=layer.blur,
    )


def colour_stats(source, clips: int) -> dict:
    shared, changes = 0, []
    for g in range(clips):
        recipe = source(g)
        layer = recipe.layers[0]
        shared += all(
            np.all(getattr(lay, k) == getattr(lay, k)[0])
            for lay in recipe.layers
            for k in ("brightness", "contrast", "saturation")
        )
        got = [luma(f).mean() for f in render_layer(layer, recipe.out_size)]
        ref = [luma(f).mean() for f in render_layer(neutral(layer), recipe.out_size)]
        ratio = np.array(got) / np.maximum(np.array(ref), 1e-6)
        changes.append(np.abs(ratio[1:] / ratio[:-1] - 1).mean())
    return {"within_clip_brightness_change": float(np.mean(changes)), "clips_sharing_one_jitter": shared / clips}


def hue_stats(source, clips: int) -> dict:
    offsets = []
    for g in range(clips):
        recipe = source(g)
        layer = recipe.layers[0]
        if layer.grayscale[0]:
            continue
        inner = cv2.erode((recipe.cls_gt[0] > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        if inner.sum() < 50:
            continue
        got = render_layer(layer, recipe.out_size)[0][inner]
        ref = render_layer(neutral(layer), recipe.out_size)[0][inner]
        offsets.append(hue_offset(np.median(ref, 0), np.median(got, 0)))
    off = np.abs(offsets)
    return {
        "hue_clips": len(off),
        "median_abs_hue_offset_deg": float(np.median(off)),
        "share_beyond_3_deg": float((off > 3.0).mean()),
    }


def sharpness_stats(files: list[str], stage: str, frames: int, seed: int) -> dict:
    jpegs = [Path(f).read_bytes() for f in files]
    s = sharpness(jpegs, "main" if stage == "main_training" else "pre", tuple(STAGES[stage]["crop_size"]), frames, seed)
    return {
        "laplacian_ours": s.ours,
        "laplacian_ours_without_blur": s.ours_without_blur,
        "laplacian_pil_reference": s.reference,
        "ratio": s.ours / s.reference,
        "ratio_without_blur": s.ours_without_blur / s.reference,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=200, help="clips per colour statistic")
    ap.add_argument("--frames", type=int, default=60, help="frames per sharpness statistic")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    result: dict = {"clips": args.clips, "frames": args.frames, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="data_parity_") as tmp:
        videos, static = generate(tmp)
        cfg = data_cfg(videos, static)
        for stage in STAGES:
            source = make_recipe_source(
                cfg,
                STAGES[stage],
                stage=stage,
                data_root=tmp,
                cache_root=tmp,
                seed=args.seed,
                world_size=1,
                batch_size=1,
                total_iterations=10**6,
            )
            try:
                stats = colour_stats(source, args.clips) if stage == "main_training" else hue_stats(source, args.clips)
            finally:
                source.close()
            if stage == "main_training":
                files = sorted(str(p) for p in Path(videos, "JPEGImages").rglob("*.jpg"))
            else:
                files = sorted(str(p) for p in Path(static).glob("*.jpg"))
            stats["sharpness"] = sharpness_stats(files, stage, args.frames, args.seed)
            result[stage] = stats
            print(stage, json.dumps(stats), file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

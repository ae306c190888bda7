#!/usr/bin/env python
"""Benchmark the SA-V converter (cutie.dataprep.sav.convert) on a generated SA-V-like set (CPU).

    python scripts/benchmark_sav.py [--videos 3] [--frames 48] [--masklets 4] [--repeats 3]

Writes `--videos` mp4 videos (mp4v, 24 fps, 1280x720, SA-V's most common size) of `--frames` frames each, with a
manual JSON of `--masklets` overlapping ellipse masklets per annotated frame (every 4th frame), to a temporary
folder (deleted afterwards); converts them with 1 and 2 workers, a fresh output folder per run, and reports the
median time, annotated frames/s and annotated frames/s per worker process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from cutie.dataprep import sav

W, H, FPS = 1280, 720, 24


def _write_video(folder: Path, name: str, frames: int, masklets: int, rng: np.random.Generator) -> int:
    """One video and its manual JSON; returns its number of annotated frames."""
    base = rng.integers(0, 255, size=(H // 8, W // 8, 3), dtype=np.uint8)
    background = cv2.resize(base, (W, H), interpolation=cv2.INTER_LINEAR)  # texture that compresses like video
    starts = rng.uniform([100, 100], [W - 100, H - 100], size=(masklets, 2))
    speeds = rng.uniform(-6, 6, size=(masklets, 2))
    axes = rng.uniform(40, 260, size=(masklets, 2))
    writer = cv2.VideoWriter(str(folder / f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (W, H))
    annotated = []
    for t in range(frames):
        img = background.copy()
        masks = []
        for k in range(masklets):
            # moving ellipses of random sizes, overlapping where they cross (painted over the texture)
            cx, cy = starts[k] + speeds[k] * t
            m = np.zeros((H, W), np.uint8)
            cv2.ellipse(m, (int(cx), int(cy)), (int(axes[k][0]), int(axes[k][1])), 0, 0, 360, 1, -1)
            img[m.astype(bool)] = (40 * k + 30) % 255
            masks.append(m)
        writer.write(img)
        if t % sav.ANNOTATION_STEP == 0:
            frame = []
            for m in masks:
                rle = mask_utils.encode(np.asfortranarray(m))
                frame.append({"size": [H, W], "counts": rle["counts"].decode("ascii")})
            annotated.append(frame)
    writer.release()
    doc = {
        "video_id": name,
        "video_frame_count": float(frames),
        "video_height": float(H),
        "video_width": float(W),
        "masklet": annotated,
        "masklet_id": list(range(masklets)),
        "masklet_num": masklets,
    }
    (folder / f"{name}_manual.json").write_text(json.dumps(doc))
    return len(annotated)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--frames", type=int, default=48, help="frames per video (24 fps: 48 = 2 s)")
    ap.add_argument("--masklets", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_sav_") as tmp:
        src = Path(tmp) / "sav_train" / "sav_000"
        src.mkdir(parents=True)
        start = time.perf_counter()
        annotated = sum(_write_video(src, f"sav_{k:06d}", args.frames, args.masklets, rng) for k in range(args.videos))
        print(f"generated {args.videos} videos ({args.frames} frames of {W}x{H} each) in "
              f"{time.perf_counter() - start:.1f}s")  # fmt: skip
        for workers in (1, 2):
            times = []
            for r in range(args.repeats):
                out = Path(tmp) / f"out-{workers}-{r}"
                t0 = time.perf_counter()
                summary = sav.convert(src.parent, out, workers=workers)
                times.append(time.perf_counter() - t0)
                assert not summary.failed and summary.frames == annotated, summary.lines()
            med = statistics.median(times)
            print(
                f"workers {workers}: {args.videos} videos, {annotated} annotated frames "
                f"({args.videos * args.frames} decoded): median {med:.2f}s of {args.repeats} -> "
                f"{annotated / med:.1f} annotated frames/s, {annotated / med / workers:.1f} per worker"
            )


if __name__ == "__main__":
    main()

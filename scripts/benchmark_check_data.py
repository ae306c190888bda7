#!/usr/bin/env python
"""Benchmark the every-frame data check on a generated dataset the size of DAVIS 2017 trainval (CPU).

    python scripts/benchmark_check_data.py [--videos 90] [--frames 67] [--repeats 3] [--workdir /tmp]

Generates `videos` x `frames` 854x480 frames (textured JPEGs of about 80 KB and palette PNGs, as DAVIS 480p)
into a temporary folder, deleted afterwards. Generation stays cheap: each video encodes 4 distinct frames and
writes their bytes under every frame name (the check reads each file; identical bytes cost the same).
Reports the full check (index.summarize: listing, pairing, every file, per-video consistency) with no cache file
("cold", though the page cache holds the fresh files: a first check on a cold disk adds the read time) and with
the cache from the previous run ("cached"), median of `repeats`; and, per file on one core, the PNG inflate check
against PIL's full decode (`load()`) and the JPEG segment walk against PIL's header read
(cutie/data/index/frame_check.py documents the choices).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from cutie.data.index import frame_check
from cutie.data.index.datasets import summarize
from cutie.testing.synthetic import make_video_dataset
from cutie.utils import image_files

DISTINCT = 4  # encoded frames per video


def generate(root: Path, videos: int, frames: int) -> int:
    """DAVIS layout under root; returns the number of frames."""
    make_video_dataset(str(root), videos=videos, frames=DISTINCT, size=(480, 854), texture=True)
    for v in range(videos):
        for folder, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
            d = root / folder / f"video{v:03d}"
            encoded = [(d / f"{k:05d}.{ext}").read_bytes() for k in range(DISTINCT)]
            for f in range(DISTINCT, frames):
                (d / f"{f:05d}.{ext}").write_bytes(encoded[f % DISTINCT])
    return videos * frames


def _check(root: Path, cache: Path) -> tuple[float, int]:
    cfg = {
        "vos_datasets": {"BENCH": {"image_directory": "JPEGImages", "mask_directory": "Annotations"}},
        "main_training": {"datasets": ["BENCH"]},
    }
    start = time.perf_counter()
    (rep,) = summarize(cfg, str(root), seq_length=8, stages=["main_training"], cache_root=str(cache))
    seconds = time.perf_counter() - start
    assert rep.ok, rep.problems
    return seconds, rep.checked.read


def _per_file(files: list[Path], check, pil_full: bool) -> tuple[float, float]:
    """(seconds per file of the check, of PIL: full load() for PNGs, header only for JPEGs), one core."""
    start = time.perf_counter()
    for p in files:
        check(str(p))
    ours = (time.perf_counter() - start) / len(files)
    start = time.perf_counter()
    for p in files:
        with Image.open(p) as im:
            if pil_full:
                im.load()
    return ours, (time.perf_counter() - start) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=90)
    parser.add_argument("--frames", type=int, default=67)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="where the temporary dataset goes (default: the system's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cutie_check_bench_", dir=args.workdir))
    try:
        start = time.perf_counter()
        n = generate(work / "data", args.videos, args.frames)
        size = sum(p.stat().st_size for p in (work / "data").rglob("*") if p.is_file())
        print(
            f"generated {args.videos} videos, {n} frames ({size / 2**20:.0f} MB) in {time.perf_counter() - start:.1f}s"
        )
        workers = frame_check._workers(2 * n)
        cold, cached = [], []
        for r in range(args.repeats):
            cache = work / f"cache{r}"
            seconds, read = _check(work / "data", cache)
            assert read == 2 * n
            cold.append(seconds)
            seconds, read = _check(work / "data", cache)
            assert read == 0
            cached.append(seconds)
        print(f"full check, {2 * n} files, {workers} worker processes ({os.cpu_count()} CPUs):")
        print(f"  cold (no cache file):  median {statistics.median(cold):.2f}s  runs {[round(t, 2) for t in cold]}")
        print(f"  cached (0 files read): median {statistics.median(cached):.2f}s  runs {[round(t, 2) for t in cached]}")
        pngs = sorted((work / "data" / "Annotations").rglob("*.png"))[:500]
        ours, pil = _per_file(pngs, image_files.check_png, pil_full=True)
        print(f"per PNG, one core: inflate check {ours * 1e6:.0f} us, PIL load() {pil * 1e6:.0f} us")
        jpgs = sorted((work / "data" / "JPEGImages").rglob("*.jpg"))[:500]
        ours, pil = _per_file(jpgs, image_files.check_jpeg, pil_full=False)
        print(
            f"per JPEG, one core: segment walk + end marker {ours * 1e6:.0f} us, PIL open (header) {pil * 1e6:.0f} us"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

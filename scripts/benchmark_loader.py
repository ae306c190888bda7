#!/usr/bin/env python
"""Training-clip throughput of a loader backend.

    python scripts/benchmark_loader.py --backend torch|dali --stage main|pre --workers N --clips K [--data DIR]

Warm-up batches first, then K clips are timed; CPU use is the CPU time of this process and all its children
(loader workers) over the timed window; this process converts the batches on --main-threads threads (see --help).
The last line is one JSON object: backend, stage, workers, clips_per_s, clips_per_s_per_core (per CPU core
actually used), cores_used, clips, wall_s, data.

Without --data, sources at real sizes are generated in a temporary folder (854x480 textured videos with 1-3
objects; static images of 300-800 px). With --data: for --stage main a DAVIS-format folder (JPEGImages/<video>/,
Annotations/<video>/), for --stage pre a flat folder of NAME.jpg + NAME.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from cutie.data.loaders.build import build_train_loader
from cutie.testing.synthetic import make_static_dataset, make_video_dataset

# Official stage settings (cutie/config/train_config.yaml).
STAGES = {
    "main": {
        "seq_length": 8,
        "num_objects": 3,
        "crop_size": [480, 480],
        "merge_probability": 0.5,
        "max_skip_schedule": [5, 10, 15, 5],
        "max_skip_schedule_fraction": [0.0, 0.1, 0.3, 0.8],
    },
    "pre": {"seq_length": 3, "num_objects": 1, "crop_size": [384, 384]},
}


def _generate(root: str, stage: str) -> str:
    if stage == "main":
        for i, ids in enumerate([(1,), (1, 2), (1, 2, 3), (2, 4)]):
            make_video_dataset(
                os.path.join(root, "videos"), videos=1, frames=40, size=(480, 854), object_ids=ids, texture=True, seed=i
            )
            # make_video_dataset names videos from 000; give each call its own name
            os.rename(
                os.path.join(root, "videos", "JPEGImages", "video000"),
                os.path.join(root, "videos", "JPEGImages", f"v{i}"),
            )
            os.rename(
                os.path.join(root, "videos", "Annotations", "video000"),
                os.path.join(root, "videos", "Annotations", f"v{i}"),
            )
        return os.path.join(root, "videos")
    return make_static_dataset(os.path.join(root, "static"), images=40, sizes=(300, 800), texture=True)


def _data_cfg(path: str, stage: str) -> dict:
    return {
        "vos_datasets": {
            "BENCH": {
                "image_directory": os.path.join(path, "JPEGImages"),
                "mask_directory": os.path.join(path, "Annotations"),
                "multiplier": 1,
                "frame_interval": 1,
                "subset": None,
                "empty_masks": None,
            }
        },
        "image_datasets": {"BENCH": {"directory": path, "data_structure": 1, "multiplier": 1}},
        "main_training": {"datasets": ["BENCH"] if stage == "main" else []},
        "pre_training": {"datasets": ["BENCH"] if stage == "pre" else []},
    }


def _tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and every live descendant (Linux /proc)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(name)] = int(fields[1])
        ticks[int(name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["torch", "dali"], default="torch")
    ap.add_argument("--stage", choices=["main", "pre"], default="main")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--clips", type=int, default=64, help="clips to time (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="batches before timing")
    ap.add_argument("--batch", type=int, default=4, help="clips per batch")
    ap.add_argument("--data", default=None, help="a source folder instead of generated data (see above)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--main-threads",
        type=int,
        default=None,
        help="torch threads of this (main) process, which turns uint8 batches into float32/int64 (default: torch's "
        "choice, as in training). With every core busy in a worker, 1 avoids OpenMP threads spinning at barriers "
        "while they wait for a core, which counts as CPU time without doing loader work",
    )
    args = ap.parse_args(argv)
    if args.main_threads:
        torch.set_num_threads(args.main_threads)

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        path = os.path.abspath(args.data) if args.data else _generate(tmp, args.stage)
        stage = "main_training" if args.stage == "main" else "pre_training"
        loader = build_train_loader(
            _data_cfg(path, args.stage),
            STAGES[args.stage],
            stage=stage,
            data_root=path,
            cache_root=tmp,
            seed=0,
            rank=0,
            world_size=1,
            batch_size=args.batch,
            num_workers=args.workers,
            device=torch.device(args.device),
            backend=args.backend,
            total_iterations=10**6,
        )
        try:
            it = loader.iterate(0)
            for _ in range(args.warmup):
                next(it)
            batches = -(-args.clips // args.batch)
            cpu0, t0 = _tree_cpu_seconds(), time.perf_counter()
            for _ in range(batches):
                next(it)
            wall = time.perf_counter() - t0
            cpu = _tree_cpu_seconds() - cpu0
        finally:
            loader.close()
    clips = batches * args.batch
    cores = max(cpu / wall, 1e-9)
    result = {
        "backend": args.backend,
        "stage": args.stage,
        "workers": args.workers,
        "clips_per_s": round(clips / wall, 2),
        "clips_per_s_per_core": round(clips / wall / cores, 2),
        "cores_used": round(cores, 2),
        "clips": clips,
        "wall_s": round(wall, 2),
        "data": args.data or "generated",
    }
    print(f"timed {clips} clips in {wall:.1f} s using {cores:.2f} cores", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

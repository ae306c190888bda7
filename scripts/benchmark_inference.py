#!/usr/bin/env python
"""Inference speed (frames/s) and peak memory of the evaluation procedure on a synthetic video.

The official procedure (cutie.inference.VideoProcessor, eval settings: mem_every 5, 5 memory frames, top-k
30) over a random video with rectangle objects given on the first frame, at DAVIS 480p (480x854 by default).
Random weights (speed does not depend on them). The first --warmup frames are not timed.

    python scripts/benchmark_inference.py --model small --frames 20 --threads 2

Prints one human-readable line, then (last) one JSON line. Peak memory: CUDA allocated on a GPU, else the
process's peak resident set (the whole process: weights, Python, torch).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from cutie.inference import InferenceSettings, VideoProcessor
from cutie.inference.runner import peak_memory_mb
from cutie.model import build_network, load_model_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["small", "base"], default="small")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--frames", type=int, default=20, help="video length (the first frame carries the masks)")
    p.add_argument("--objects", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed frames after the first")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--amp", action="store_true", help="float16 autocast (CUDA only)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("threads", "height", "width", "objects"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.frames < args.warmup + 2:
        p.error("--frames must exceed --warmup + 1 (the first frame and the warm-up frames are not timed)")
    return args


def synthetic_video(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(args.seed)
    frames = torch.rand(args.frames, 3, args.height, args.width, generator=gen)  # T*3*H*W
    mask = torch.zeros(args.height, args.width, dtype=torch.long)
    for k in range(1, args.objects + 1):
        y, x = (int(v) for v in torch.randint(0, args.height // 2, (2,), generator=gen))
        mask[y : y + args.height // 3, x : x + args.width // 4] = k
    return frames, mask


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        # This run's peak only: main() may run several times in one process (scripts/gpu_acceptance.py).
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    net = build_network(load_model_config(args.model)).to(device).eval()
    frames, mask = synthetic_video(args)
    processor = VideoProcessor(net, InferenceSettings(amp=args.amp and device.type == "cuda"))
    timed, seconds = 0, 0.0
    for t in range(args.frames):
        image = frames[t].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        processor.step(image, mask.to(device) if t == 0 else None, end=t == args.frames - 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if t > args.warmup:
            timed += 1
            seconds += time.perf_counter() - tic
    result = {
        "model": args.model,
        "size": f"{args.height}x{args.width}",
        "frames_timed": timed,
        "objects": args.objects,
        "fps": timed / seconds,
        "peak_memory_mb": peak_memory_mb(device),
        "device": args.device if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": args.threads,
        "amp": bool(args.amp and device.type == "cuda"),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    kind = "CUDA allocated" if device.type == "cuda" else "process peak RSS"
    print(
        f"Cutie-{args.model} {result['size']}, {args.objects} objects: {result['fps']:.2f} frames/s over {timed} "
        f"frames, peak memory {result['peak_memory_mb']:.0f} MiB ({kind})"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

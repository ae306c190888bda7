#!/usr/bin/env python
"""Seconds per training step and peak memory, on synthetic data.

One step = training-mode clip forward (forward_clip) + LossComputer + backward + grad-norm clip + AdamW step
over the official parameter groups, with the main-training stage settings (points, reference frames, deep
update probability). Random weights (speed does not depend on them) and random clips with rectangle objects.

    python scripts/benchmark_step.py --model small --batch 2 --frames 8 --objects 3 --size 192 --threads 2

Prints one human-readable line, then (last) one JSON line. --amp: float16 autocast + GradScaler on CUDA (as
official), bfloat16 autocast on the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time

import torch

from cutie.model import build_network, load_model_config
from cutie.model.clip_forward import forward_clip
from cutie.model.losses import LossComputer, LossSettings
from cutie.model.param_groups import param_groups


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["small", "base"], default="small")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--size", type=int, default=192, help="square crop side (a multiple of 16)")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    # main-training stage settings (cutie/config/train_config.yaml)
    p.add_argument("--num-points", type=int, default=12544)
    p.add_argument("--num-ref-frames", type=int, default=3)
    p.add_argument("--deep-update-prob", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.size % 16:
        p.error(f"--size {args.size}: must be a multiple of 16")
    if args.frames < 2 or args.objects < 1 or args.batch < 1 or args.steps < 1:
        p.error("need --frames >= 2, --objects >= 1, --batch >= 1, --steps >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible")
    return args


def synthetic_batch(b: int, t: int, o: int, size: int, device: torch.device, gen: torch.Generator) -> dict:
    """Random frames; every object a random rectangle per frame (later objects drawn over earlier ones)."""
    cls_gt = torch.zeros(b, t, 1, size, size, dtype=torch.long)
    for bi in range(b):
        for ti in range(t):
            for k in range(1, o + 1):
                y0, x0 = torch.randint(0, size * 3 // 4, (2,), generator=gen).tolist()
                hh, ww = torch.randint(size // 8, size // 2, (2,), generator=gen).tolist()
                cls_gt[bi, ti, 0, y0 : y0 + hh, x0 : x0 + ww] = k
    objects = torch.arange(1, o + 1).view(1, o, 1, 1)
    first = (cls_gt[:, 0] == objects).long().unsqueeze(1)  # B*1*O*H*W
    batch = {
        "rgb": torch.rand(b, t, 3, size, size, generator=gen),
        "first_frame_gt": first,
        "cls_gt": cls_gt,
        "selector": torch.ones(b, o),
        "num_objects": torch.full((b,), o, dtype=torch.long),
    }
    return {**{k: v.to(device) for k, v in batch.items()}, "object_counts": (o,) * b}  # as the loaders' batches


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    amp_dtype = (torch.float16 if on_cuda else torch.bfloat16) if args.amp else None

    model_cfg = load_model_config(args.model)
    net = build_network(model_cfg).to(device).train()
    aux = model_cfg["aux_loss"]  # the main-training stage's sampling settings, the model's aux weights
    losses = LossComputer(
        LossSettings(args.num_points, 3.0, 0.75, float(aux["sensory"]["weight"]), float(aux["query"]["weight"]))
    )
    groups = param_groups(net, lr=1e-4, weight_decay=0.001, embed_weight_decay=0.0, backbone_lr_ratio=0.1)
    optimizer = torch.optim.AdamW(groups, lr=1e-4, eps=1e-6 if args.amp else 1e-8)
    scaler = torch.amp.GradScaler("cuda", init_scale=8192, enabled=on_cuda and args.amp)
    batch = synthetic_batch(
        args.batch, args.frames, args.objects, args.size, device, torch.Generator().manual_seed(args.seed)
    )

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = forward_clip(net, batch, num_ref_frames=args.num_ref_frames, deep_update_prob=args.deep_update_prob)
        total = losses.compute(batch, out)["total_loss"]
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 3.0)
        scaler.step(optimizer)
        scaler.update()
        return float(total.detach())

    def timed() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process over all its threads) for one step."""
        if on_cuda:
            torch.cuda.synchronize()
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        if on_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - start_cpu

    for _ in range(args.warmup):
        timed()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = zip(*(timed() for _ in range(args.steps)), strict=True)

    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux
    result = {
        "model": args.model,
        "batch": args.batch,
        "frames": args.frames,
        "objects": args.objects,
        "size": args.size,
        "amp": args.amp,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if on_cuda else platform.processor() or platform.machine(),
        "threads": args.threads,
        "num_points": args.num_points,
        "warmup": args.warmup,
        "steps": args.steps,
        "sec_per_step_median": statistics.median(times),
        "sec_per_step_mean": statistics.fmean(times),
        "sec_per_step_all": list(times),
        # CPU time is what a busy shared machine distorts least: on a quiet one, wall ~ cpu / threads.
        "cpu_sec_per_step_median": statistics.median(cpu_times),
        "peak_rss_gb": peak_rss_gb,
        "peak_gpu_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9 if on_cuda else None,
        "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9 if on_cuda else None,
        "torch": torch.__version__,
    }
    memory = f"peak RSS {peak_rss_gb:.2f} GB"
    if on_cuda:
        memory += f", peak GPU {result['peak_gpu_allocated_gb']:.2f} GB allocated"
    print(
        f"{args.model} B={args.batch} T={args.frames} O={args.objects} {args.size}x{args.size} {args.device}"
        f"{' amp' if args.amp else ''} threads={args.threads}: {result['sec_per_step_median']:.2f} s/step "
        f"(median of {args.steps} after {args.warmup} warm-up; {result['cpu_sec_per_step_median']:.1f} CPU s/step), "
        f"{memory}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

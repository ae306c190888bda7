"""Progress: text lines with ETA, TensorBoard scalars, and a per-step metrics.jsonl (main process only)."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import torch

from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook, every
from cutie.training.step import StepResult


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressHook(Hook):
    def __init__(self, interval: int) -> None:
        self.interval = max(1, interval)
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.start_time = 0.0
        self.metrics_file = None

    def before_stage(self, ctx: StageContext) -> None:
        self.start_time = time.perf_counter()
        if ctx.dist.is_main:
            self.metrics_file = open(ctx.run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            ctx.log.info(ctx.plan.describe())

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        for k, v in result.losses.items():
            self.sums[k] += v
        self.sums["grad_norm"] += result.grad_norm
        self.sums["data_s"] += ctx.timings.get("data_s", 0.0)
        self.sums["step_s"] += ctx.timings.get("step_s", 0.0)
        self.count += 1
        if not ctx.dist.is_main:
            return
        lr = max(g["lr"] for g in ctx.optimizer.param_groups)  # the base lr (backbone runs at a ratio)
        record = {
            "stage": ctx.stage,
            "iteration": ctx.iteration,
            "lr": lr,
            "grad_norm": result.grad_norm,
            "finite": result.finite,
            **result.losses,
        }
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if every(self.interval, ctx.iteration) or ctx.iteration == ctx.plan.num_iterations:
            self._report(ctx, lr)

    def _report(self, ctx: StageContext, lr: float) -> None:
        n = max(1, self.count)
        avg = {k: v / n for k, v in self.sums.items()}
        done = ctx.iteration - ctx.run_start_iteration
        elapsed = time.perf_counter() - self.start_time
        rate = done / elapsed if elapsed > 0 else 0.0
        left = ctx.plan.num_iterations - ctx.iteration
        eta_stage = left / rate if rate > 0 else float("nan")
        eta_run = (left + ctx.later_stage_iterations) / rate if rate > 0 else float("nan")
        clips_per_s = rate * ctx.plan.global_batch
        loader = ctx.loader
        bad = getattr(loader, "bad_samples", 0)
        loss_terms = " ".join(
            f"{k} {v:.4f}"
            for k, v in avg.items()
            if k not in ("grad_norm", "data_s", "step_s", "total_loss") and "/" not in k
        )
        ctx.log.info(
            f"[{ctx.stage}] it {ctx.iteration}/{ctx.plan.num_iterations} | loss {avg.get('total_loss', 0):.4f} "
            f"({loss_terms}) | lr {lr:.2e} | grad {avg['grad_norm']:.2f} | {rate:.2f} it/s, {clips_per_s:.1f} clips/s "
            f"| data {avg['data_s']:.3f}s step {avg['step_s']:.3f}s | ETA stage {format_duration(eta_stage)} "
            f"run {format_duration(eta_run)}" + (f" | skipped samples {bad}" if bad else "")
        )
        w = ctx.writer
        if w is not None:
            for k, v in avg.items():
                group = "time" if k.endswith("_s") else "train"
                w.add_scalar(f"{ctx.stage}/{group}/{k}", v, ctx.iteration)
            w.add_scalar(f"{ctx.stage}/train/lr", lr, ctx.iteration)
            w.add_scalar(f"{ctx.stage}/speed/clips_per_s", clips_per_s, ctx.iteration)
            w.add_scalar(f"{ctx.stage}/data/skipped_samples", bad, ctx.iteration)
            if ctx.device.type == "cuda":
                w.add_scalar(
                    f"{ctx.stage}/speed/gpu_mem_gb",
                    torch.cuda.max_memory_allocated(ctx.device) / 2**30,
                    ctx.iteration,
                )
            w.flush()
        self.sums.clear()
        self.count = 0

    def close(self, ctx: StageContext) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
            self.metrics_file = None

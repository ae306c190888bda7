"""Progress: text lines with ETA, TensorBoard scalars, and a per-step metrics.jsonl (main process only)."""

from __future__ import annotations

import io
import json
import time

import torch

from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook, every
from cutie.training.step import StepResult
from cutie.training.timing import seconds
from cutie.utils import dist
from cutie.utils.append_file import open_append_inside


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class ProgressHook(Hook):
    """Losses stay on the device: summed per interval there, and the per-step records of metrics.jsonl are kept
    as tensors and written (one host read for all of them) at sync steps (`ctx.sync_now`)."""

    deferrable_errors = True  # the averages over ranks (the collective) come before the main process's file writes

    def __init__(self, interval: int) -> None:
        self.interval = max(1, interval)
        self.sums: dict[str, torch.Tensor] = {}  # 0-d float64 on the device
        self.data_s = 0.0
        self.step_times: list[object] = []  # float or Elapsed per step of the interval
        self.count = 0
        self.pending: list[tuple[int, float, StepResult]] = []  # (iteration, lr, result) not yet in metrics.jsonl
        self.start_time = 0.0
        self.metrics_file = None
        self.stage = ""

    def before_stage(self, ctx: StageContext) -> None:
        self.start_time = time.perf_counter()
        self.stage = ctx.stage
        if ctx.dist.is_main:
            self.metrics_file = io.TextIOWrapper(open_append_inside(ctx.run_dir, "metrics.jsonl"), encoding="utf-8")
            ctx.log.info(ctx.plan.describe())

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        # float64 so the logged averages equal the former host-side float sums
        for k, v in [*result.losses.items(), ("grad_norm", result.grad_norm)]:
            v = v.detach().double()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.data_s += float(ctx.timings.get("data_s", 0.0))
        self.step_times.append(ctx.timings.get("step_s", 0.0))
        self.count += 1
        lr = max(g["lr"] for g in ctx.optimizer.param_groups)  # the base lr (backbone runs at a ratio); host float
        if ctx.dist.is_main:
            self.pending.append((ctx.iteration, lr, result))
        if every(self.interval, ctx.iteration) or ctx.iteration == ctx.plan.num_iterations:
            self._report(ctx, lr)
        if ctx.sync_now:
            self._write_records()

    def _write_records(self) -> None:
        """One host read for every step since the last sync step."""
        if not self.pending or self.metrics_file is None:
            self.pending.clear()
            return
        keys = [list(r.losses) for _, _, r in self.pending]
        flat = torch.stack(
            [t.detach().double() for _, _, r in self.pending for t in (r.grad_norm, r.finite, *r.losses.values())]
        ).tolist()
        pos = 0
        for (it, lr, _), names in zip(self.pending, keys, strict=True):
            values = flat[pos : pos + 2 + len(names)]
            pos += 2 + len(names)
            record = {"stage": self.stage, "iteration": it, "lr": lr, "grad_norm": values[0], "finite": bool(values[1])}
            record.update(zip(names, values[2:], strict=True))
            self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        self.pending.clear()

    def _report(self, ctx: StageContext, lr: float) -> None:
        n = max(1, self.count)
        names = list(self.sums)
        # Every rank reaches this step (an iteration-based condition): the averages are over ranks too.
        values = dist.all_reduce_mean(torch.stack([self.sums[k] for k in names]) / n).tolist() if names else []
        avg = dict(zip(names, values, strict=True))
        avg["data_s"] = self.data_s / n
        avg["step_s"] = sum(seconds(t) for t in self.step_times) / n
        self.sums, self.data_s, self.step_times, self.count = {}, 0.0, [], 0
        if not ctx.dist.is_main:
            return
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

    def close(self, ctx: StageContext) -> None:
        if self.metrics_file is not None:
            self._write_records()  # the steps since the last sync step (a stop or an error ended the stage)
            self.metrics_file.close()
            self.metrics_file = None

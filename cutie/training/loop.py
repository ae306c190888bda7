"""The stage loop: fetch a batch, run the pure step, step the schedule, call the hooks."""

from __future__ import annotations

import time

import torch

from cutie.data.loader import TooManyBadSamplesError
from cutie.training.checkpoint import preserved_rng
from cutie.training.context import StageContext
from cutie.training.hooks import Hook
from cutie.training.step import train_step
from cutie.utils import dist


class StopTraining(RuntimeError):
    """Raised after a stop request (signal, non-finite losses) once the checkpoint is safely written."""

    exit_code = 3


class BadDataStop(StopTraining):
    """Too many unreadable samples on some rank: every rank stops before the next step (the caller saves a
    checkpoint of the steps completed so far)."""

    exit_code = 4


def _any_rank(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(dist.all_reduce_mean(t).item() > 0)


def run_stage(ctx: StageContext, hooks: list[Hook], loss_fn, signals) -> None:
    """Runs `ctx.plan.num_iterations - ctx.iteration` steps; raises StopTraining on a stop request. Every hook's
    `close` runs whatever happens; `after_stage` only when the stage completed."""
    try:
        for h in hooks:
            h.before_stage(ctx)
        _steps(ctx, hooks, loss_fn, signals)
        for h in hooks:
            h.after_stage(ctx)
    finally:
        for h in hooks:
            try:
                h.close(ctx)
            except Exception as e:  # noqa: BLE001 (a failing close must not hide the error that ended the stage)
                ctx.log.warning(f"{type(h).__name__}.close failed: {e}")


def _steps(ctx: StageContext, hooks: list[Hook], loss_fn, signals) -> None:
    distributed = ctx.dist.distributed
    with preserved_rng():  # starting the loader (worker seeds) must not move the training stream either
        batches = ctx.loader.iterate(ctx.iteration)
    clip = ctx.stage_cfg.clip_grad_norm
    while ctx.iteration < ctx.plan.num_iterations:
        for h in hooks:
            h.before_step(ctx)
        t0 = time.perf_counter()
        bad: TooManyBadSamplesError | None = None
        try:
            with preserved_rng():
                batch = next(batches)
        except TooManyBadSamplesError as e:
            bad = e
        # Ranks agree before the step, so all of them stop at the same iteration and can save together.
        stop = bad is not None
        if distributed:
            stop = _any_rank(stop, ctx.device)
        if stop:
            raise BadDataStop(str(bad) if bad is not None else "another process met too many unreadable samples")
        t1 = time.perf_counter()
        result = train_step(
            ctx.model,
            batch,
            loss_fn,
            ctx.optimizer,
            ctx.scaler,
            ctx.plan,
            clip,
            any_rank_nonfinite=(lambda f: _any_rank(f, ctx.device)) if distributed else (lambda f: f),
        )
        ctx.scheduler.step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)  # honest step times
        ctx.timings = {"data_s": t1 - t0, "step_s": time.perf_counter() - t1}
        ctx.batch = batch
        ctx.iteration += 1
        # All ranks must agree to stop at the same iteration (signals reach them at different moments).
        requested = signals.requested or ctx.stop_requested
        if distributed:
            requested = _any_rank(requested, ctx.device)
        if requested and not ctx.stop_requested:
            ctx.stop_requested = True
            ctx.stop_reason = ctx.stop_reason or signals.reason
        for h in hooks:
            h.after_step(ctx, result)
        if ctx.stop_requested:
            raise StopTraining(ctx.stop_reason or "stop requested")

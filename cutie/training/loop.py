"""The stage loop: fetch a batch, run the pure step, step the schedule, call the hooks.

The loop never waits for the GPU between log intervals: the step returns device tensors, the next batch is
fetched (and copied to the device, see cutie/data/loaders/build.py) while the GPU still runs the current step, step
times come from CUDA events, and the ranks agree on host-side stop reasons (a signal, unreadable data, a broken
loader, a hook that failed) with one small all-reduce per step over a CPU (gloo) group. Hooks read device values
only when `ctx.sync_now` is set. A hook's error stops every rank after the next step, with its checkpoint (no step
lost); unreadable data or a broken loader (a dead worker), and in one process a step that fails while computing
its gradients (out of device memory, an error), stop between two steps with a checkpoint of the completed ones.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from cutie.data.loaders.base import TooManyBadSamplesError
from cutie.training.checkpoint import capture_rng, preserved_rng, restore_rng
from cutie.training.context import StageContext
from cutie.training.hooks import CheckpointHook, Hook
from cutie.training.hooks.base import every
from cutie.training.out_of_memory import OutOfDeviceMemory, out_of_memory_message
from cutie.training.step import StepResult, apply_update, compute_gradients
from cutie.training.timing import StepTimer
from cutie.utils import dist
from cutie.utils.cli import first_line


class StopTraining(RuntimeError):
    """Raised after a stop request (signal, non-finite losses) once the checkpoint is safely written."""

    exit_code = 3


class BadDataStop(StopTraining):
    """Too many unreadable samples on some rank: every rank stops before the next step (the caller saves a
    checkpoint of the steps completed so far)."""

    exit_code = 4


def run_stage(ctx: StageContext, hooks: list[Hook], loss_fn, signals) -> None:
    """Runs `ctx.plan.num_iterations - ctx.iteration` steps; raises StopTraining on a stop request. Every hook's
    `close` runs whatever happens; `after_stage` only when the stage completed."""
    try:
        for h in hooks:
            h.before_stage(ctx)
        try:
            _steps(ctx, hooks, loss_fn, signals)
        except BadDataStop as e:
            # Every rank got here at the same iteration: save what the completed steps achieved.
            saved = _save_completed(ctx, hooks) or "no checkpoint was saved"
            raise BadDataStop(f"{e} | {saved}; fix the data and relaunch the same command to resume") from None
        except _LoaderBroke as e:
            saved = _save_completed(ctx, hooks) or "no checkpoint was saved"
            if e.error is None:
                raise StopTraining(f"the data loader failed on another process; {saved}") from None
            ctx.log.warning(
                f"[{ctx.stage}] the data loader failed after iteration {ctx.iteration} "
                f"({type(e.error).__name__}: {first_line(e.error)}); {saved}"
            )
            raise e.error from None
        for h in hooks:
            h.after_stage(ctx)
    finally:
        for h in hooks:
            try:
                h.close(ctx)
            except Exception as e:  # noqa: BLE001 (a failing close must not hide the error that ended the stage)
                ctx.log.warning(f"{type(h).__name__}.close failed: {e}")


def _fetch(batches) -> tuple[dict | None, Exception | None, float]:
    """(the next batch, or None and why not: too many unreadable samples, or the loader broke, seconds)."""
    t0 = time.perf_counter()
    try:
        with preserved_rng():  # drawing samples must not move the training stream
            return next(batches), None, time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 (any of them stops the stage between two steps, with a checkpoint)
        return None, e, time.perf_counter() - t0


class _LoaderBroke(Exception):
    """The loader raised something else than TooManyBadSamplesError on some rank (a worker that died, a bug):
    every rank stops at the same iteration; `error` is this rank's (None: it broke on another rank)."""

    def __init__(self, error: Exception | None) -> None:
        super().__init__(str(error))
        self.error = error


def _stop_for_data(problem: Exception | None, broke_any: bool) -> None:
    """Every rank calls this at the same iteration once some rank's loader had a problem."""
    if broke_any:
        raise _LoaderBroke(None if isinstance(problem, TooManyBadSamplesError) else problem)
    raise BadDataStop(str(problem) if problem is not None else "another process met too many unreadable samples")


def is_sync_step(ctx: StageContext, stopping: bool) -> bool:
    """Steps where hooks may read device values: log and save intervals, the stage's last step, a stop."""
    it, lg = ctx.iteration, ctx.cfg.logging
    intervals = (lg.log_text_interval, lg.save_checkpoint_interval, lg.save_weights_interval)
    return stopping or it >= ctx.plan.num_iterations or any(every(n, it) for n in intervals)


def _steps(ctx: StageContext, hooks: list[Hook], loss_fn, signals) -> None:
    distributed = ctx.dist.distributed
    with preserved_rng():  # starting the loader (worker seeds) must not move the training stream either
        batches = ctx.loader.iterate(ctx.iteration)
    timer = StepTimer(ctx.device)
    if ctx.iteration >= ctx.plan.num_iterations:
        return
    batch, bad, data_s = _fetch(batches)
    # Ranks agree before the first step; later batches are agreed on with the stop request of the step before.
    bad_any, broke_any = bad is not None, _broke(bad)
    if distributed:
        bad_any, broke_any = dist.any_rank([bad_any, broke_any])
    if bad_any:
        _stop_for_data(bad, broke_any)
    failure: HookFailure | None = None  # this rank's first after_step error: the stage stops after the next step
    while ctx.iteration < ctx.plan.num_iterations:
        for h in hooks:
            h.before_step(ctx)
        rng = None if distributed else capture_rng()  # to rewind a step that fails (see _save_before_failing)
        start = timer.mark()
        result = _step(ctx, hooks, batch, loss_fn, rng)
        ctx.scheduler.step()
        ctx.timings = {"data_s": data_s, "step_s": timer.since(start)}
        ctx.batch = batch
        ctx.iteration += 1
        # The next batch is drawn while the GPU still runs this step (the host is ahead of the device).
        bad = None
        if ctx.iteration < ctx.plan.num_iterations:
            batch, bad, data_s = _fetch(batches)
        # All ranks stop at the same iteration (signals reach them at different moments; unreadable data, a broken
        # loader and a failing hook show up on one rank): one host-side all-reduce carries them all.
        requested, failed_any = signals.requested or ctx.stop_requested, failure is not None
        bad_any, broke_any = bad is not None, _broke(bad)
        if distributed:
            requested, bad_any, broke_any, failed_any = dist.any_rank([requested, bad_any, broke_any, failed_any])
        if (requested or failed_any) and not ctx.stop_requested:
            ctx.stop_requested = True  # the checkpoint hook saves this step
            ctx.stop_reason = ctx.stop_reason or signals.reason
        ctx.sync_now = is_sync_step(ctx, requested or bad_any or failed_any)
        failure = _after_step(ctx, hooks, result, failure)
        if failed_any:
            _raise_failure(ctx, failure)
        if ctx.stop_requested:
            raise StopTraining(ctx.stop_reason or "stop requested")
        if bad_any:
            _stop_for_data(bad, broke_any)
    # A hook that failed after the stage's last step: that step's checkpoint is written (CheckpointHook), the end of
    # the stage (final validation, last weights) is left to the relaunch.
    if dist.any_rank([failure is not None])[0] if distributed else failure is not None:
        _raise_failure(ctx, failure)


def _broke(problem: Exception | None) -> bool:
    return problem is not None and not isinstance(problem, TooManyBadSamplesError)


def _save_completed(ctx: StageContext, hooks: list[Hook]) -> str | None:
    """Between two steps (every rank calls it): the checkpoint of the completed iterations, as the stop's message
    says it; None for a stage without a CheckpointHook."""
    saver = next((h for h in hooks if isinstance(h, CheckpointHook)), None)
    if saver is None:
        return None
    path = saver.save_checkpoint(ctx, complete=False)
    where = f" ({path})" if path is not None else ""
    return f"a checkpoint of the {ctx.iteration} completed iterations was saved{where}"


def _step(ctx: StageContext, hooks: list[Hook], batch: dict, loss_fn, rng: dict | None) -> StepResult:
    """The pure step (cutie/training/step.py), and what a failure inside it leaves: a failure while computing
    the gradients leaves the state of the completed iterations, saved before the error goes on (one process);
    one in the update may leave the weights partly updated: nothing is saved."""
    out_of_memory = False
    try:
        grads = compute_gradients(ctx.model, batch, loss_fn, ctx.optimizer, ctx.scaler, ctx.plan)
    except torch.OutOfMemoryError:
        out_of_memory = True
    except Exception:  # a sample that breaks the network, a bug: keep the iterations done, then the error
        checkpoint, _ = _save_before_failing(ctx, hooks, rng)
        ctx.log.warning(f"[{ctx.stage}] iteration {ctx.iteration + 1} failed; {checkpoint}")
        raise
    if out_of_memory:  # out of the handler: its traceback held the step's activations
        checkpoint, saved = _save_before_failing(ctx, hooks, rng)
        raise OutOfDeviceMemory(out_of_memory_message(ctx, checkpoint, saved))
    try:
        return apply_update(ctx.optimizer, ctx.scaler, ctx.plan, ctx.stage_cfg.clip_grad_norm, grads)
    except torch.OutOfMemoryError as e:
        checkpoint = "no checkpoint of this state was saved (the optimiser's update was cut short)"
        raise OutOfDeviceMemory(out_of_memory_message(ctx, checkpoint, False)) from e


def _save_before_failing(ctx: StageContext, hooks: list[Hook], rng: dict | None) -> tuple[str, bool]:
    """After a failure in the gradients of iteration N+1, the state is that of the N completed iterations once
    the random streams are rewound to the step's start (`rng`): saved, a resume equals an uninterrupted run.
    Under DDP (`rng` None) the other ranks wait inside the step's gradient all-reduce, where no collective of
    ours can reach them (torchrun ends them when this rank exits): the last checkpoint stays the one to resume
    from. Returns what the failure's message says about it, and whether a checkpoint was saved."""
    if rng is None:
        return "no checkpoint of this state was saved (the other processes wait inside the step)", False
    restore_rng(rng)
    try:
        saved = _save_completed(ctx, hooks)
    except Exception as e:  # noqa: BLE001 (the step's own error must still come out, with this reason)
        return f"saving the checkpoint of the {ctx.iteration} completed iterations failed: {first_line(e)}", False
    return (saved, True) if saved is not None else ("no checkpoint was saved", False)


@dataclass(frozen=True)
class HookFailure:
    hook: str
    iteration: int
    error: Exception


def _after_step(ctx: StageContext, hooks: list[Hook], result, failure: HookFailure | None) -> HookFailure | None:
    """Every hook runs (the later ones hold collectives and the checkpoint); returns the first failure so far."""
    for h in hooks:
        try:
            h.after_step(ctx, result)
        except Exception as e:
            if not h.deferrable_errors:
                raise
            if failure is None:
                failure = HookFailure(type(h).__name__, ctx.iteration, e)
                ctx.log.warning(
                    f"[{ctx.stage}] {failure.hook} failed at iteration {ctx.iteration}: {type(e).__name__}: "
                    f"{first_line(e)}; training stops after the next step, with a checkpoint"
                )
            else:  # the first failure is the one reported; later ones only logged
                ctx.log.warning(f"[{ctx.stage}] {type(h).__name__} also failed at iteration {ctx.iteration}: {e}")
    return failure


def _raise_failure(ctx: StageContext, failure: HookFailure | None) -> None:
    """After the checkpoint of this step: says so, then raises the hook's own error (its type decides the exit
    code and message: a path error, a full disk, ...); a rank whose hooks did not fail stops like on a request."""
    where = f"{failure.hook} failed at iteration {failure.iteration}" if failure else "a hook failed on another process"
    ctx.log.warning(
        f"[{ctx.stage}] training stopped at iteration {ctx.iteration} because {where}; a checkpoint of the "
        f"{ctx.iteration} completed iterations was saved: fix the cause and relaunch the same command to resume"
    )
    if failure is None:
        raise StopTraining(f"{where}; a checkpoint was saved")
    raise failure.error

"""A non-finite loss skips the step with a warning; several in a row stop the run with a saved checkpoint.

The step skips on the device (cutie/training/step.py); this hook reads the per-step flags only at sync steps
(`ctx.sync_now`: log and save intervals, a stop), one host read for the whole interval, so the warnings and a
stop for too many consecutive non-finite steps come at the next sync step, with the exact iterations.
"""

from __future__ import annotations

import torch

from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook
from cutie.training.step import StepResult
from cutie.utils import dist


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteHook(Hook):
    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0
        self.pending: list[tuple[int, torch.Tensor]] = []  # (iteration, 0-d bool finite) since the last sync step

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        self.pending.append((ctx.iteration, torch.as_tensor(result.finite)))
        if not ctx.sync_now:
            return
        # Every rank is at the same sync step: the flags are agreed on (a loss can be non-finite on one rank only).
        bad = dist.all_reduce_mean(torch.stack([~f.to(torch.bool) for _, f in self.pending]).float()).tolist()
        iterations = [it for it, _ in self.pending]
        self.pending.clear()
        for it, b in zip(iterations, bad, strict=True):
            self._count(ctx, it, b > 0)

    def _count(self, ctx: StageContext, iteration: int, bad: bool) -> None:
        if not bad:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        ctx.log.warning(
            f"[{ctx.stage}] iteration {iteration}: non-finite loss or gradient "
            f"({self.consecutive} in a row, {self.total} in this stage); step skipped"
        )
        if self.consecutive >= self.max_consecutive and not ctx.stop_requested:
            ctx.stop_requested = True
            ctx.stop_reason = (
                f"{self.consecutive} consecutive non-finite steps at iteration {iteration}: "
                "lower the learning rate, check the data, or disable AMP; a checkpoint was saved"
            )

    def state_dict(self) -> dict:
        # Checkpoints are written at sync steps, where `pending` has just been read.
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = state.get("consecutive", 0)
        self.total = state.get("total", 0)

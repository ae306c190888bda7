"""A non-finite loss skips the step with a warning; several in a row stop the run with a saved checkpoint."""

from __future__ import annotations

from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook
from cutie.training.step import StepResult


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteHook(Hook):
    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.total = 0

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        if result.finite:
            self.consecutive = 0
            return
        self.consecutive += 1
        self.total += 1
        ctx.log.warning(
            f"[{ctx.stage}] iteration {ctx.iteration}: non-finite loss or gradient "
            f"({self.consecutive} in a row, {self.total} in this stage); step skipped"
        )
        if self.consecutive >= self.max_consecutive:
            ctx.stop_requested = True
            ctx.stop_reason = (
                f"{self.consecutive} consecutive non-finite steps at iteration {ctx.iteration}: "
                "lower the learning rate, check the data, or disable AMP; a checkpoint was saved"
            )

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = state.get("consecutive", 0)
        self.total = state.get("total", 0)

from __future__ import annotations

from cutie.training.context import StageContext
from cutie.training.step import StepResult


class Hook:
    """Called around the stage loop. `state_dict` goes into full checkpoints.

    `after_stage` runs only when the stage completed (it may save the final checkpoint); `close` always runs,
    after an exception too (like detectron2's after_train in a `finally`): release files and handles there."""

    def before_stage(self, ctx: StageContext) -> None:
        pass

    def before_step(self, ctx: StageContext) -> None:
        pass

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        pass

    def after_stage(self, ctx: StageContext) -> None:
        pass

    def close(self, ctx: StageContext) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def every(interval: int, iteration: int) -> bool:
    return interval > 0 and iteration % interval == 0

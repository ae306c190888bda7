from __future__ import annotations

from cutie.training.context import StageContext
from cutie.training.step import StepResult


class Hook:
    """Called around the stage loop. `state_dict` goes into full checkpoints.

    `after_stage` runs only when the stage completed (it may save the final checkpoint); `close` always runs,
    after an exception too (like detectron2's after_train in a `finally`): release files and handles there.

    A hook with `deferrable_errors` does every collective of its `after_step` before anything that may fail on
    one rank only (or agrees on its errors across ranks): an error of its `after_step` then does not end the run
    there and then: the loop finishes the step's other hooks, stops every rank after the next step with a
    checkpoint (so no completed step is lost), then raises it. Other hooks' errors end the stage at once."""

    deferrable_errors = False

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

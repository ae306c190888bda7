"""Max-skip curriculum of main training: [5, 10, 15, 5] at fractions [0, 0.1, 0.3, 0.8] of the iterations.

The loader derives each sample's max skip from its iteration (so a resumed run samples exactly as an uninterrupted
one); this hook announces each change and records the current value in checkpoints and TensorBoard.
"""

from __future__ import annotations

from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook


class CurriculumHook(Hook):
    def __init__(self) -> None:
        self.max_skip: int | None = None

    def before_step(self, ctx: StageContext) -> None:
        value = ctx.loader.max_skip_for(ctx.iteration)
        if value != self.max_skip:
            if ctx.dist.is_main:
                ctx.log.info(
                    f"[{ctx.stage}] curriculum: max skip {self.max_skip} -> {value} at iteration {ctx.iteration}"
                )
                if ctx.writer is not None:
                    ctx.writer.add_scalar(f"{ctx.stage}/max_skip", value, ctx.iteration)
            self.max_skip = value

    def state_dict(self) -> dict:
        return {"max_skip": self.max_skip}

    def load_state_dict(self, state: dict) -> None:
        self.max_skip = state.get("max_skip")

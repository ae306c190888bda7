"""Every log_image_interval: a grid of frames / ground truth / prediction to TensorBoard and as a PNG."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook, every
from cutie.training.step import StepResult
from cutie.training.visualize import clip_grid
from cutie.utils.atomic import atomic_write


class ImageHook(Hook):
    deferrable_errors = True  # main process only, no collective

    def __init__(self, interval: int) -> None:
        self.interval = interval

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        last = ctx.iteration == ctx.plan.num_iterations
        if not ctx.dist.is_main or ctx.batch is None or not (every(self.interval, ctx.iteration) or last):
            return
        grid = clip_grid(ctx.batch, result.output)  # 3*H*W
        if ctx.writer is not None:
            ctx.writer.add_image(f"{ctx.stage}/clip", grid, ctx.iteration)
        arr = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)  # H*W*3
        img = Image.fromarray(arr)
        atomic_write(ctx.run_dir / "images" / f"{ctx.stage}_{ctx.iteration:07d}.png", lambda f: img.save(f, "PNG"))

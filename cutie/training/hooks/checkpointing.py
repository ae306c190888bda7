"""Weights files (plain official-key state dicts) and full checkpoints (exact resume), written atomically.

- weights: every save_weights_interval, at the end of the stage (`<exp_id>_<stage>_last.pth`) and on a stop request.
- full checkpoints (cutie/training/checkpoint.py: safe format, sha256 digest): every save_checkpoint_interval, after
  the last step (before the final validation), at the end of the stage and on a stop request; the newest `keep`
  are kept.
- before each write the free space is checked (DiskFullError: one line, nothing half-written, older files intact).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cutie.model.weights import save_weights
from cutie.training import checkpoint as ckpt_io
from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook, every
from cutie.training.memory_format import contiguous_copy
from cutie.training.step import StepResult
from cutie.utils import dist
from cutie.utils.atomic import check_free_space


def weights_path(ctx: StageContext, tag: str) -> Path:
    return ctx.run_dir / f"{ctx.cfg.run.exp_id}_{ctx.stage}_{tag}.pth"


class CheckpointHook(Hook):
    def __init__(self, hook_states: Callable[[], dict], keep: int = 2) -> None:
        self.hook_states = hook_states
        self.keep = keep

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        it = ctx.iteration
        if ctx.stop_requested:
            self.save_weights(ctx, f"{it:07d}")
            self.save_checkpoint(ctx, complete=False)
            return
        if every(ctx.cfg.logging.save_weights_interval, it) and it < ctx.plan.num_iterations:
            self.save_weights(ctx, f"{it:07d}")
        last = it >= ctx.plan.num_iterations
        # The last step's checkpoint is written before after_stage's final validation (minutes on a real set,
        # and it may fail or be killed): a relaunch then reruns only what follows the steps, not the steps since
        # the last interval checkpoint. after_stage overwrites it with the complete one.
        if last or every(ctx.cfg.logging.save_checkpoint_interval, it):
            self.save_checkpoint(ctx, complete=False)

    def after_stage(self, ctx: StageContext) -> None:
        self.save_weights(ctx, "last")
        self.save_checkpoint(ctx, complete=True)

    def save_weights(self, ctx: StageContext, tag: str) -> None:
        if ctx.dist.is_main:
            path = weights_path(ctx, tag)
            state = ctx.net.state_dict()
            check_free_space(path.parent, ckpt_io.tensor_bytes(state) + (1 << 20), f"the weights file {path.name}")
            save_weights(state, path)
            ctx.log.info(f"[{ctx.stage}] weights saved: {path}")

    def save_checkpoint(self, ctx: StageContext, *, complete: bool) -> Path | None:
        """Every rank must call this (each contributes its random state); the main process writes and returns
        the path."""
        rng_all = dist.all_gather_object(ckpt_io.rng_state())
        # The other ranks come back only once the main process has written it (a rank that exits right after a
        # stop would make torchrun terminate the main process in the middle of writing the checkpoint of that
        # stop), and with its verdict.
        what = f"write the checkpoint of iteration {ctx.iteration}"
        return dist.main_writes(ctx.dist.is_main, lambda: self._write(ctx, complete, rng_all), what)

    def _write(self, ctx: StageContext, complete: bool, rng_all: list) -> Path:
        state = {
            "format": ckpt_io.FORMAT,
            # In the default layout whatever memory_format trained them (cutie/training/memory_format.py).
            "weights": contiguous_copy(ctx.net.state_dict()),
            "optimizer": contiguous_copy(ctx.optimizer.state_dict()),
            "scheduler": ctx.scheduler.state_dict(),
            "scaler": ctx.scaler.state_dict(),
            "stage": ctx.stage,
            "iteration": ctx.iteration,
            "stage_complete": complete,
            "world_size": ctx.dist.world_size,
            "rng": rng_all,
            # The loader is stateless: samples derive from (seed, global index), so the iteration is its state.
            "loader": {"seed": ctx.cfg.run.seed, "next_iteration": ctx.iteration},
            "data": ctx.data_fingerprint,  # a resume says whether the data changed under the same paths
            "hooks": self.hook_states(),
            "config": ctx.cfg.resolved_yaml,
        }
        path = ckpt_io.checkpoint_path(ctx.run_dir, ctx.stage, ctx.iteration)
        ckpt_io.save_checkpoint(state, path)
        ckpt_io.prune_checkpoints(ctx.run_dir, self.keep)
        ctx.log.info(f"[{ctx.stage}] checkpoint saved: {path}")
        return path

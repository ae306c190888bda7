"""Weights files (plain official-key state dicts) and full checkpoints (exact resume), written atomically.

- weights: every save_weights_interval, at the end of the stage (`<exp_id>_<stage>_last.pth`) and on a stop request.
- full checkpoints: every save_checkpoint_interval, at the end of the stage and on a stop request; the newest
  `keep` are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from cutie.model.weights import save_weights
from cutie.training import checkpoint as ckpt_io
from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook, every
from cutie.training.step import StepResult
from cutie.utils import dist


def weights_path(ctx: StageContext, tag: str) -> Path:
    return ctx.run_dir / f"{ctx.cfg.exp_id}_{ctx.stage}_{tag}.pth"


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
        if every(int(ctx.cfg.save_weights_interval), it) and it < ctx.plan.num_iterations:
            self.save_weights(ctx, f"{it:07d}")
        if every(int(ctx.cfg.save_checkpoint_interval), it) and it < ctx.plan.num_iterations:
            self.save_checkpoint(ctx, complete=False)

    def after_stage(self, ctx: StageContext) -> None:
        self.save_weights(ctx, "last")
        self.save_checkpoint(ctx, complete=True)

    def save_weights(self, ctx: StageContext, tag: str) -> None:
        if ctx.dist.is_main:
            path = weights_path(ctx, tag)
            save_weights(ctx.net.state_dict(), path)
            ctx.log.info(f"[{ctx.stage}] weights saved: {path}")

    def save_checkpoint(self, ctx: StageContext, *, complete: bool) -> None:
        # Every rank contributes its random state; only the main process writes.
        rng_all = dist.all_gather_object(ckpt_io.rng_state())
        if not ctx.dist.is_main:
            return
        state = {
            "format": "cutie-train-checkpoint-v1",
            "weights": {k: v.detach().cpu() for k, v in ctx.net.state_dict().items()},
            "optimizer": ctx.optimizer.state_dict(),
            "scheduler": ctx.scheduler.state_dict(),
            "scaler": ctx.scaler.state_dict(),
            "stage": ctx.stage,
            "iteration": ctx.iteration,
            "stage_complete": complete,
            "world_size": ctx.dist.world_size,
            "rng": rng_all,
            # The loader is stateless: samples derive from (seed, global index), so the iteration is its state.
            "loader": {"seed": int(ctx.cfg.seed), "next_iteration": ctx.iteration},
            "hooks": self.hook_states(),
            "config": OmegaConf.to_yaml(ctx.cfg, resolve=True),
        }
        path = ckpt_io.checkpoint_path(ctx.run_dir, ctx.stage, ctx.iteration)
        ckpt_io.atomic_torch_save(state, path)
        ckpt_io.prune_checkpoints(ctx.run_dir, self.keep)
        ctx.log.info(f"[{ctx.stage}] checkpoint saved: {path}")

"""Validation during main training: every eval_interval and at the end of the stage, on a held-out set
(DAVIS 2017 val when present; the tiny dataset's val split for data=tiny*). Keeps `best.pth` beside the latest.
The set's files are checked with the training data when training starts (cutie/data/index/scan.py,
`scan_val_dataset`), so that a bad file cannot stop the run at its first validation."""

from __future__ import annotations

from dataclasses import asdict

from cutie.data.index.scan import val_paths
from cutie.model.weights import save_weights
from cutie.training.compiling import eager_only
from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook, every
from cutie.training.step import StepResult
from cutie.utils import dist


class ValidationHook(Hook):
    def __init__(self, max_videos: int | None = None) -> None:
        self.best: float | None = None
        self.max_videos = max_videos
        self.warned = False

    def _dirs(self, ctx: StageContext) -> tuple[str, str, str | None] | None:
        """The set's paths as the start-up check resolved them (cutie/data/index/scan.py), None when absent."""
        val = ctx.cfg.data.val_dataset
        if val is None:
            return None
        paths = val_paths(asdict(val), ctx.cfg.run.data_root)
        if paths is None:
            if not self.warned and ctx.dist.is_main:
                ctx.log.info(f"validation skipped: {val.image_directory}, {val.mask_directory} or {val.subset} "
                             f"not found under {ctx.cfg.run.data_root} (data.val_dataset)")  # fmt: skip
            self.warned = True
        return paths

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        if every(ctx.cfg.logging.eval_interval, ctx.iteration) and ctx.iteration < ctx.plan.num_iterations:
            self.run(ctx)

    def after_stage(self, ctx: StageContext) -> None:
        self.run(ctx)

    def run(self, ctx: StageContext) -> None:
        if ctx.plan.single_object:
            return  # the single-object pre-training network cannot segment several objects jointly
        dirs = self._dirs(ctx)
        if dirs is None:
            return
        if ctx.dist.is_main:
            from cutie.inference import validate  # imported here: inference is only needed when validating

            image_dir, mask_dir, subset = dirs
            with eager_only():  # `compile: true` compiles for training clips, not for inference's frames
                metrics = validate(
                    ctx.net,
                    image_dir=image_dir,
                    mask_dir=mask_dir,
                    subset=subset,
                    device=ctx.device,
                    out_dir=str(ctx.run_dir / "val" / f"{ctx.stage}_{ctx.iteration:07d}"),
                    max_videos=self.max_videos,
                    use_all_masks=ctx.cfg.data.val_dataset.use_all_masks,
                )
            score = float(metrics["J&F-Mean"])
            text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            ctx.log.info(f"[{ctx.stage}] validation at iteration {ctx.iteration}: {text}")
            if ctx.writer is not None:
                for k, v in metrics.items():
                    if isinstance(v, float):
                        ctx.writer.add_scalar(f"{ctx.stage}/val/{k}", v, ctx.iteration)
            if self.best is None or score > self.best:
                self.best = score
                save_weights(ctx.net.state_dict(), ctx.run_dir / "best.pth")
                ctx.log.info(f"[{ctx.stage}] new best J&F {score:.4f}: {ctx.run_dir / 'best.pth'}")
        dist.barrier()

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")

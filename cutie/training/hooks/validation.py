"""Validation during main training: every eval_interval and at the end of the stage, on a held-out set
(DAVIS 2017 val when present; the tiny dataset's val split for data=tiny*), over every rank (each segments its
share of the videos). Keeps `best.pth` beside the latest.
The set's files are checked with the training data when training starts (cutie/data/index/scan.py,
`scan_val_dataset`), so that a bad file cannot stop the run at its first validation. A validation that does not
fit the GPU's memory beside the training state is skipped with a warning (every rank alike): the run trains on."""

from __future__ import annotations

from dataclasses import asdict

import torch

from cutie.data.index.scan import val_paths
from cutie.model.weights import save_weights
from cutie.training.compiling import eager_only
from cutie.training.context import StageContext
from cutie.training.hooks.base import Hook, every
from cutie.training.step import StepResult
from cutie.utils import dist


class ValidationHook(Hook):
    deferrable_errors = True  # validate() and the report raise a rank's error on every rank (merge, main_writes)

    def __init__(self, max_videos: int | None = None) -> None:
        self.best: float | None = None
        self.max_videos = max_videos
        self.warned = False

    def _dirs(self, ctx: StageContext) -> tuple[str, str, str | None] | None:
        """The set's paths as the start-up check resolved them (cutie/data/index/scan.py), None when absent (on
        any rank: the ranks validate together or not at all)."""
        val = ctx.cfg.data.val_dataset
        if val is None:
            return None
        paths = val_paths(asdict(val), ctx.cfg.run.data_root)
        absent = dist.any_rank([paths is None])[0] if ctx.dist.distributed else paths is None
        if absent and not self.warned:
            where = "" if paths is None else " on another rank"
            message = (f"validation skipped: {val.image_directory}, {val.mask_directory} or {val.subset} "
                       f"not found under {ctx.cfg.run.data_root}{where} (data.val_dataset)")  # fmt: skip
            if ctx.dist.is_main:
                ctx.log.info(message)
            else:  # the other ranks log warnings only
                ctx.log.warning(message)
            self.warned = True
        return None if absent else paths

    def after_step(self, ctx: StageContext, result: StepResult) -> None:
        if every(ctx.cfg.logging.eval_interval, ctx.iteration) and ctx.iteration < ctx.plan.num_iterations:
            self.run(ctx)

    def after_stage(self, ctx: StageContext) -> None:
        self.run(ctx)

    def run(self, ctx: StageContext) -> None:
        """Every rank segments its share of the videos and gets the same scores (cutie/inference/validate.py);
        the main process logs them and writes best.pth, and every rank gets its verdict."""
        if ctx.plan.single_object:
            return  # the single-object pre-training network cannot segment several objects jointly
        dirs = self._dirs(ctx)
        if dirs is None:
            return
        from cutie.inference import validate  # imported here: inference is only needed when validating
        from cutie.inference.runner import InferenceOutOfMemory

        image_dir, mask_dir, subset = dirs
        try:
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
                    dist_state=ctx.dist,
                )
        except InferenceOutOfMemory as e:  # the same error on every rank (cutie/inference/shards.py: merge)
            self._skipped(ctx, e)
            return
        score = float(metrics["J&F-Mean"])
        improved = self.best is None or score > self.best
        if improved:
            self.best = score  # on every rank alike: the scores are the same everywhere
        # Logged and best.pth written by the main process; every rank gets its verdict (none trains on alone).
        what = "log the validation or write best.pth"
        dist.main_writes(ctx.dist.is_main, lambda: self._report(ctx, metrics, score, improved), what)

    def _skipped(self, ctx: StageContext, e: Exception) -> None:
        """Training itself fits (it ran up to here), so the run goes on without this validation's scores; the
        weights can be validated later in a process of their own, where nothing else holds the GPU."""
        if ctx.dist.is_main:
            ctx.log.warning(
                f"[{ctx.stage}] validation at iteration {ctx.iteration} skipped, training goes on: {e}; validate "
                "the saved weights afterwards with cutie/eval.py (chunk_size and max_internal_size lower its memory)"
            )
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()  # the validation's cached blocks back to the device before the next step

    def _report(self, ctx: StageContext, metrics: dict[str, float], score: float, improved: bool) -> None:
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        ctx.log.info(f"[{ctx.stage}] validation at iteration {ctx.iteration}: {text}")
        if ctx.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, float):
                    ctx.writer.add_scalar(f"{ctx.stage}/val/{k}", v, ctx.iteration)
        if improved:
            save_weights(ctx.net.state_dict(), ctx.run_dir / "best.pth")
            ctx.log.info(f"[{ctx.stage}] new best J&F {score:.4f}: {ctx.run_dir / 'best.pth'}")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = state.get("best")

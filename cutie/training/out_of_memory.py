"""A training step that does not fit the device's memory: what did not fit, and the setting that makes it fit."""

from __future__ import annotations

import torch

from cutie.training.context import StageContext
from cutie.training.plan import smaller_micro_batch


class OutOfDeviceMemory(RuntimeError):
    """A training step that does not fit the GPU's memory: one line with the setting to change, and whether a
    checkpoint of the completed iterations was saved (see cutie/training/loop.py)."""


def out_of_memory_message(ctx: StageContext, checkpoint: str, saved: bool) -> str:
    """What did not fit (the step, its sizes, the device's peak), `checkpoint` (what was saved, or why nothing
    was; `saved`: a checkpoint of the completed iterations was written) and the change that makes it fit: a
    smaller micro-batch first (the global batch, and so the run, is the same: a relaunch with it resumes), then
    AMP."""
    plan, stage = ctx.plan, ctx.stage
    amp = "off" if plan.amp_dtype is None else str(plan.amp_dtype).replace("torch.", "")
    what = (
        f"[{stage}] iteration {ctx.iteration + 1}: the step needs more memory than {ctx.device} has (micro-batch "
        f"{plan.micro_batch} clip(s) of {ctx.stage_cfg.seq_length} frames, model={ctx.cfg.model.name}, AMP {amp}"
    )
    if ctx.device.type == "cuda":
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        what += f", peak {torch.cuda.max_memory_allocated(ctx.device) / 2**30:.1f} of {total / 2**30:.1f} GiB"
    smaller = smaller_micro_batch(plan)
    if smaller is not None:
        fix = (
            f"max_batch_per_gpu={smaller} (gradient accumulation keeps the global batch of {plan.global_batch}; "
            f"the same command with it resumes from {'it' if saved else 'the last checkpoint, if any'})"
        )
    elif plan.amp_dtype is None and ctx.device.type == "cuda":
        fix = f"{stage}.amp=true (a run of its own: exp_id=<new id>), or a GPU with more memory"
    else:
        fix = f"a GPU with more memory, or for a run of its own (exp_id=<new id>) a shorter {stage}.seq_length" + (
            " or model=small" if ctx.cfg.model.name != "small" else ""
        )
    return f"{what}); {checkpoint}; fix: {fix}"

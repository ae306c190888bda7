"""The pure training step: data -> loss -> backward -> optimiser step. No logging, saving or scheduling here."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from cutie.training.plan import StagePlan


@dataclass
class StepResult:
    losses: dict[str, float]  # every loss term, averaged over micro-batches
    grad_norm: float
    finite: bool  # False: the step was skipped (non-finite loss or gradients)
    output: dict  # the last micro-batch's network output (for pictures)


def split_batch(batch: dict, n: int) -> list[dict]:
    """Splits every per-sample tensor along dim 0 into n equal micro-batches."""
    if n == 1:
        return [batch]
    out: list[dict] = [{} for _ in range(n)]
    for k, v in batch.items():
        parts = torch.chunk(v, n, dim=0) if torch.is_tensor(v) else [v] * n
        for i in range(n):
            out[i][k] = parts[i]
    return out


def train_step(
    model: nn.Module,
    batch: dict,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    plan: StagePlan,
    clip_grad_norm: float,
    any_rank_nonfinite=lambda flag: flag,
) -> StepResult:
    """One optimiser step over the per-rank batch, with gradient accumulation over micro-batches.

    `model(batch)` runs the training-mode clip forward (possibly DDP-wrapped); `loss_fn(batch, output)` returns a
    dict with 'total_loss'. A non-finite loss or gradient on any rank skips the step on every rank (the caller
    passes `any_rank_nonfinite` to agree across ranks), leaving weights and optimiser state untouched.
    """
    optimizer.zero_grad(set_to_none=True)
    micro = split_batch(batch, plan.accumulation_steps)
    device_type = batch["rgb"].device.type
    sums: dict[str, float] = {}
    output: dict = {}
    finite = True
    for i, mb in enumerate(micro):
        last = i == len(micro) - 1
        # Only the last micro-batch synchronises gradients across ranks.
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device_type, dtype=plan.amp_dtype or torch.float32, enabled=plan.amp_dtype is not None):
                output = model(mb)
            losses = loss_fn(mb, output)
            total = losses["total_loss"]
            finite = finite and bool(torch.isfinite(total))
            scaler.scale(total / len(micro)).backward()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) / len(micro)

    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    # With a GradScaler (fp16), an overflow is routine and handled by the scaler itself; otherwise it is a problem.
    finite = finite and (plan.use_grad_scaler or bool(torch.isfinite(grad_norm)))
    if any_rank_nonfinite(not finite):
        optimizer.zero_grad(set_to_none=True)
        scaler.update()
        return StepResult(sums, float(grad_norm), False, output)
    scaler.step(optimizer)
    scaler.update()
    return StepResult(sums, float(grad_norm), True, output)

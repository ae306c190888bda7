"""The pure training step: data -> loss -> backward -> optimiser step. No logging, saving or scheduling here.

No host synchronisation: losses, the gradient norm and the finite flag stay device tensors (0-d), read by the
hooks only at log intervals, and a non-finite step is skipped by a device-side decision (see `_optimizer_step`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from cutie.training.plan import StagePlan


@dataclass
class StepResult:
    losses: dict[str, torch.Tensor]  # every loss term (0-d, detached), averaged over micro-batches
    grad_norm: torch.Tensor  # 0-d
    finite: torch.Tensor  # 0-d bool; False: the step was skipped (non-finite loss or gradients)
    output: dict  # the last micro-batch's network output (for pictures)


@dataclass
class Gradients:
    """What the forward and backward passes leave for the update (the gradients themselves are on the parameters)."""

    losses: dict[str, torch.Tensor]  # every loss term (0-d, detached), averaged over micro-batches
    loss_finite: torch.Tensor  # 0-d bool: every micro-batch's total loss was finite
    output: dict  # the last micro-batch's network output


def split_batch(batch: dict, n: int) -> list[dict]:
    """Splits every per-sample value into n equal micro-batches: tensors along dim 0, tuples and lists (per-sample
    host values such as `object_counts`) into consecutive slices; anything else goes to every micro-batch."""
    if n == 1:
        return [batch]
    out: list[dict] = [{} for _ in range(n)]
    for k, v in batch.items():
        if torch.is_tensor(v):
            parts = torch.chunk(v, n, dim=0)
        elif isinstance(v, list | tuple):
            size = len(v) // n
            parts = [v[i * size : (i + 1) * size] for i in range(n)]
        else:
            parts = [v] * n
        for i in range(n):
            out[i][k] = parts[i]
    return out


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, skip: torch.Tensor) -> None:
    """Steps unless `skip` (0-d bool on the device). With a GradScaler (fp16) the scaler itself skips on inf/NaN
    gradients (without a host read when the optimiser is fused). Without one, a fused optimiser takes `found_inf`
    (its update and step count are masked on the device); other optimisers keep their step count on the host, so
    the decision needs a host read there (the CPU default: nothing to stall)."""
    if scaler.is_enabled():
        scaler.step(optimizer)
    elif optimizer.defaults.get("fused"):
        optimizer.grad_scale, optimizer.found_inf = None, skip.float()
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None
    elif not bool(skip):
        optimizer.step()
    scaler.update()


def train_step(
    model: nn.Module,
    batch: dict,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    plan: StagePlan,
    clip_grad_norm: float,
) -> StepResult:
    """One optimiser step over the per-rank batch, with gradient accumulation over micro-batches: the gradients
    (`compute_gradients`), then the update (`apply_update`)."""
    grads = compute_gradients(model, batch, loss_fn, optimizer, scaler, plan)
    return apply_update(optimizer, scaler, plan, clip_grad_norm, grads)


def compute_gradients(
    model: nn.Module,
    batch: dict,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    plan: StagePlan,
) -> Gradients:
    """Forward and backward over the micro-batches. Only the parameters' `.grad` change (weights, optimiser and
    scaler state do not), so a failure here (out of memory, a sample that breaks the network) loses nothing but
    this step's gradients.

    `model(batch)` runs the training-mode clip forward (possibly DDP-wrapped); `loss_fn(batch, output)` returns a
    dict with 'total_loss'. A non-finite loss on any rank skips the step on every rank, leaving weights and
    optimiser state untouched: the loss is multiplied by NaN before backward (by exactly 1.0 when finite), so the
    gradients turn NaN, DDP's gradient average carries that to every rank, and every rank sees the same
    non-finite gradient norm: the ranks agree without a collective of their own.
    """
    optimizer.zero_grad(set_to_none=True)
    micro = split_batch(batch, plan.accumulation_steps)
    sums: dict[str, torch.Tensor] = {}
    output: dict = {}
    loss_finite: torch.Tensor | None = None
    for i, mb in enumerate(micro):
        last = i == len(micro) - 1
        # Only the last micro-batch synchronises gradients across ranks.
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            device_type = mb["rgb"].device.type
            with torch.autocast(device_type, dtype=plan.amp_dtype or torch.float32, enabled=plan.amp_dtype is not None):
                output = model(mb)
            losses = loss_fn(mb, output)
            total = losses["total_loss"]
            ok = torch.isfinite(total.detach())  # 0-d bool
            loss_finite = ok if loss_finite is None else loss_finite & ok
            poison = torch.where(ok, 1.0, float("nan")).to(total.dtype)  # 1.0 leaves the numbers bit-identical
            scaler.scale(total * poison / len(micro)).backward()
        for k, v in losses.items():
            v = v.detach() if torch.is_tensor(v) else torch.tensor(float(v), device=total.device)
            sums[k] = sums[k] + v / len(micro) if k in sums else v / len(micro)
    assert loss_finite is not None  # split_batch gives at least one micro-batch
    return Gradients(sums, loss_finite, output)


def apply_update(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    plan: StagePlan,
    clip_grad_norm: float,
    grads: Gradients,
) -> StepResult:
    """Unscales and clips the gradients, then steps the optimiser (or skips a non-finite step) and the scaler.
    A failure in here may leave the parameters partly updated."""
    scaler.unscale_(optimizer)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)  # 0-d, no host read
    grad_finite = torch.isfinite(grad_norm)
    # With a GradScaler (fp16), a gradient overflow is routine (the scaler skips and lowers the scale): only a
    # non-finite loss counts as a problem. Without one, a non-finite gradient is one too.
    finite = grads.loss_finite if plan.use_grad_scaler else grads.loss_finite & grad_finite
    _optimizer_step(optimizer, scaler, ~grad_finite)
    return StepResult(grads.losses, grad_norm.detach(), finite, grads.output)

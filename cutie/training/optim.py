"""AdamW with the official parameter groups, and the per-stage learning-rate schedule."""

from __future__ import annotations

import bisect

import torch

from cutie.config.train import StageConfig
from cutie.model.param_groups import param_groups


def build_optimizer(net: torch.nn.Module, stage_cfg: StageConfig, adam_eps: float) -> torch.optim.AdamW:
    groups = param_groups(
        net,
        lr=stage_cfg.learning_rate,
        weight_decay=stage_cfg.weight_decay,
        embed_weight_decay=stage_cfg.embed_weight_decay,
        backbone_lr_ratio=stage_cfg.backbone_lr_ratio,
    )
    # Fused on a GPU: one kernel for the update, and it takes a device-side `found_inf`, so a non-finite step is
    # skipped without a host read (cutie/training/step.py). The CPU keeps the default implementation (its numbers).
    fused = all(p.is_cuda for p in net.parameters())
    return torch.optim.AdamW(groups, lr=stage_cfg.learning_rate, eps=adam_eps, fused=fused or None)


def lr_factor(iteration: int, schedule: str, steps: list[int], gamma: float) -> float:
    """Multiplier of every group's base lr at `iteration` (0-based): constant, or x gamma at each step."""
    if schedule == "constant":
        return 1.0
    return gamma ** bisect.bisect_right(steps, iteration)


def build_scheduler(optimizer: torch.optim.Optimizer, stage_cfg: StageConfig) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = stage_cfg.lr_schedule
    steps = list(stage_cfg.lr_schedule_steps)
    gamma = stage_cfg.lr_schedule_gamma
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, schedule, steps, gamma))

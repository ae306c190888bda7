"""Derived, validated settings of one stage (never written back into the config)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cutie.config.train import STAGES, ConfigError, TrainConfig

__all__ = ["STAGES", "ConfigError", "StagePlan", "enabled_stages", "plan_stage", "smaller_micro_batch"]


@dataclass(frozen=True)
class StagePlan:
    stage: str
    num_iterations: int
    global_batch: int
    per_rank_batch: int
    micro_batch: int  # per forward/backward; < per_rank_batch means gradient accumulation
    accumulation_steps: int
    amp_dtype: torch.dtype | None  # None: float32
    use_grad_scaler: bool  # fp16 only
    adam_eps: float
    single_object: bool
    amp_requested: bool = False  # the stage's `amp` option, which only the CUDA path honours

    def describe(self) -> str:
        amp = "off" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")
        if self.amp_requested and self.amp_dtype is None:
            # Said so that a CPU run's figures are not read as AMP ones (autocast is a CUDA-path setting here).
            amp += f" ({self.stage}.amp=true has no effect on the CPU: float32)"
        return (
            f"{self.stage}: {self.num_iterations} iterations, global batch {self.global_batch} = "
            f"{self.per_rank_batch}/rank (micro-batch {self.micro_batch} x {self.accumulation_steps}), "
            f"AMP {amp}, AdamW eps {self.adam_eps:g}, {'single' if self.single_object else 'multi'}-object network"
        )


def plan_stage(cfg: TrainConfig, stage: str, world_size: int, device: torch.device) -> StagePlan:
    """Derives one stage's per-rank values (the values themselves were checked by the config parse); raises
    ConfigError naming the option when they do not fit this world size."""
    s = cfg.stage(stage)
    batch = s.batch_size
    if batch % world_size != 0:
        raise ConfigError(
            f"{stage}.batch_size={batch} is the global batch and must be divisible by the number of processes "
            f"({world_size}); set {stage}.batch_size to a multiple of {world_size} or change --nproc_per_node"
        )
    per_rank = batch // world_size
    limit = cfg.runtime.max_batch_per_gpu
    accum = 1 if limit is None else math.ceil(per_rank / limit)
    if per_rank % accum != 0:
        raise ConfigError(
            f"max_batch_per_gpu={limit} does not split the per-rank batch {per_rank} evenly; "
            f"choose a divisor of {per_rank}"
        )
    amp_dtype = None
    if s.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return StagePlan(
        stage=stage,
        num_iterations=s.num_iterations,
        global_batch=batch,
        per_rank_batch=per_rank,
        micro_batch=per_rank // accum,
        accumulation_steps=accum,
        amp_dtype=amp_dtype,
        use_grad_scaler=amp_dtype == torch.float16,
        amp_requested=s.amp,
        # A larger eps keeps Adam stable when gradients come out of mixed precision (official setting).
        adam_eps=1e-6 if amp_dtype is not None else 1e-8,
        single_object=s.num_objects == 1,
    )


def smaller_micro_batch(plan: StagePlan) -> int | None:
    """The largest `max_batch_per_gpu` below the plan's micro-batch that splits the per-rank batch evenly (the
    global batch, and so the training, stays); None at a micro-batch of 1."""
    for accum in range(plan.accumulation_steps + 1, plan.per_rank_batch + 1):
        if plan.per_rank_batch % accum == 0:
            return plan.per_rank_batch // accum
    return None


def enabled_stages(cfg: TrainConfig) -> list[str]:
    stages = cfg.enabled_stages
    if not stages:
        raise ConfigError("both pre_training.enabled and main_training.enabled are False: nothing to train")
    return stages

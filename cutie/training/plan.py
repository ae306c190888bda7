"""Derived, validated settings of one stage (never written back into the config)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

STAGES = ("pre_training", "main_training")


class ConfigError(ValueError):
    """A configuration problem found before training starts; the message names the option and the fix."""


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

    def describe(self) -> str:
        amp = "off" if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")
        return (
            f"{self.stage}: {self.num_iterations} iterations, global batch {self.global_batch} = "
            f"{self.per_rank_batch}/rank (micro-batch {self.micro_batch} x {self.accumulation_steps}), "
            f"AMP {amp}, AdamW eps {self.adam_eps:g}, {'single' if self.single_object else 'multi'}-object network"
        )


def plan_stage(cfg: DictConfig, stage: str, world_size: int, device: torch.device) -> StagePlan:
    """Checks one stage's settings and derives per-rank values; raises ConfigError naming the option."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {STAGES}")
    s = cfg[stage]
    batch = int(s.batch_size)
    if batch <= 0:
        raise ConfigError(f"{stage}.batch_size must be positive, got {batch}")
    if batch % world_size != 0:
        raise ConfigError(
            f"{stage}.batch_size={batch} is the global batch and must be divisible by the number of processes "
            f"({world_size}); set {stage}.batch_size to a multiple of {world_size} or change --nproc_per_node"
        )
    per_rank = batch // world_size
    limit = cfg.get("max_batch_per_gpu")
    if limit is not None and int(limit) <= 0:
        raise ConfigError(f"max_batch_per_gpu must be positive or null, got {limit}")
    accum = 1 if limit is None else math.ceil(per_rank / int(limit))
    if per_rank % accum != 0:
        raise ConfigError(
            f"max_batch_per_gpu={limit} does not split the per-rank batch {per_rank} evenly; "
            f"choose a divisor of {per_rank}"
        )
    iters = int(s.num_iterations)
    if iters <= 0:
        raise ConfigError(f"{stage}.num_iterations must be positive, got {iters}")
    steps = list(s.get("lr_schedule_steps") or [])
    if s.lr_schedule not in ("constant", "step"):
        raise ConfigError(f"{stage}.lr_schedule must be 'constant' or 'step', got {s.lr_schedule!r}")
    if sorted(steps) != steps or any(not 0 < int(x) <= iters for x in steps):
        raise ConfigError(f"{stage}.lr_schedule_steps={steps} must be increasing and within (0, {iters}]")
    crop = list(s.crop_size)
    if len(crop) != 2 or any(int(c) % 16 for c in crop):
        raise ConfigError(f"{stage}.crop_size={crop} must be two multiples of 16 (the network's stride)")
    if int(s.num_ref_frames) >= int(s.seq_length):
        raise ConfigError(f"{stage}.num_ref_frames must be below {stage}.seq_length")
    amp_dtype = None
    if bool(s.amp) and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return StagePlan(
        stage=stage,
        num_iterations=iters,
        global_batch=batch,
        per_rank_batch=per_rank,
        micro_batch=per_rank // accum,
        accumulation_steps=accum,
        amp_dtype=amp_dtype,
        use_grad_scaler=amp_dtype == torch.float16,
        # A larger eps keeps Adam stable when gradients come out of mixed precision (official setting).
        adam_eps=1e-6 if amp_dtype is not None else 1e-8,
        single_object=int(s.num_objects) == 1,
    )


def enabled_stages(cfg: DictConfig) -> list[str]:
    stages = [s for s in STAGES if bool(cfg[s].enabled)]
    if not stages:
        raise ConfigError("both pre_training.enabled and main_training.enabled are False: nothing to train")
    return stages

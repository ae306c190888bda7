"""What the stage loop shares with its hooks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cutie.config.train import StageConfig, TrainConfig
from cutie.training.plan import StagePlan
from cutie.training.tb_events import EventWriter
from cutie.utils.dist import DistState


@dataclass
class StageContext:
    cfg: TrainConfig
    plan: StagePlan
    dist: DistState
    device: torch.device
    run_dir: Path
    net: nn.Module  # unwrapped network (official keys)
    model: nn.Module  # what the step calls: the clip-forward module, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loader: object  # cutie.data.loaders.build.TrainLoader (or the DALI equivalent)
    log: logging.Logger
    writer: EventWriter | None  # TensorBoard events on the main process, else None
    iteration: int = 0  # completed optimiser steps in this stage
    run_start_iteration: int = 0  # where this process started (for it/s and ETA)
    later_stage_iterations: int = 0  # iterations of the stages still to come (run ETA)
    stop_requested: bool = False  # set on SIGTERM/SIGINT (agreed across ranks) or by a hook
    stop_reason: str = ""
    batch: dict | None = None  # the last batch (for pictures)
    # data_s (host seconds drawing the batch), step_s (cutie.training.timing.Elapsed) of the last iteration
    timings: dict[str, object] = field(default_factory=dict)
    sync_now: bool = True  # hooks may read device values (a host sync) after this step: see loop.is_sync_step
    # cutie.data.index.fingerprint of the stage's data (main process; None elsewhere): kept in checkpoints
    data_fingerprint: list[dict] | None = None

    @property
    def stage(self) -> str:
        return self.plan.stage

    @property
    def stage_cfg(self) -> StageConfig:
        return self.cfg.stage(self.plan.stage)

"""Training clip loaders: the trainer's entry point (`build_train_loader`) and the shared recipe source.

Backends and how they plug in
-----------------------------
`make_recipe_source(data_cfg, stage_cfg, stage=..., data_root=..., cache_root=..., seed=..., world_size=...,
batch_size=..., total_iterations=...) -> RecipeSource` builds (and validates) the dataset index of a stage and
returns a picklable callable `source(global_index, attempt=0) -> ClipRecipe` (cutie/data/sampling/recipe.py). Everything
random is decided inside it from (seed, global_index), so every backend renders the same samples.
- global index of sample (rank r, slot j) of iteration `it`: g = it * batch_size * world_size + r * batch_size + j
  (`TrainLoader.indices_of(it)` gives a rank's list).
- corrupt files met while sampling (PNG masks, unreadable files) are skipped inside the source: the recipe is a
  deterministic replacement and lists them in recipe.info['bad_paths']; a backend whose JPEG decode fails calls
  `source(g, attempt=recipe.info['attempt'] + 1)` for the replacement.
- `source.set_max_skip(v)` / `source.max_skip_for(it)`: the curriculum, seen by live worker processes.
- `source.close()` when done (removes the shared override file).

backend='dali' calls `cutie.data.dali_loader.DaliClipLoader(source, num_objects=, batch_size=, rank=,
world_size=, num_workers=, device=, seed=, max_bad_fraction=)`, which must be a `TrainLoader` subclass
(implementing `iterate` and `close`; `_account` and `_to_batch` here do the bookkeeping and the batch format).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, is_dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from cutie.config.train import STAGES, StageConfig, to_dict
from cutie.data.index.datasets import build_static_index, build_video_index
from cutie.data.loaders.base import TrainLoader
from cutie.data.loaders.slots import slot_pool_bytes
from cutie.data.loaders.torch_loader import PREFETCH_FACTOR, TorchTrainLoader
from cutie.data.sampling.rng import STREAM_MAIN, STREAM_PRE
from cutie.data.sampling.source import RecipeSource
from cutie.data.sampling.static import StaticClipSampler
from cutie.data.sampling.video import VideoClipSampler

log = logging.getLogger(__name__)


def _plain(data_cfg: Any, data_root: str, cache_root: str) -> dict:
    """The data config as a plain dict, with ${cache_root}/${data_root}/${data.*} interpolations resolved (a
    typed DataConfig is already resolved)."""
    if is_dataclass(data_cfg):
        return to_dict(data_cfg)
    raw = OmegaConf.to_container(data_cfg, resolve=False) if OmegaConf.is_config(data_cfg) else dict(data_cfg)
    root = OmegaConf.create({"cache_root": str(cache_root), "data_root": str(data_root), "data": raw})
    return OmegaConf.to_container(root.data, resolve=True)


@dataclass(frozen=True)
class ClipSettings:
    """What the loader needs of a stage: the clip's shape and, in main training, merges and the max-skip
    curriculum (the typed StageConfig of the training config, or a mapping with those keys, as tests write it)."""

    seq_length: int
    num_objects: int
    crop_size: tuple[int, int]  # H, W
    merge_probability: float = 0.0
    max_skip_schedule: tuple[int, ...] = (5,)
    max_skip_schedule_fraction: tuple[float, ...] = (0.0,)

    @classmethod
    def of(cls, stage_cfg: Any) -> ClipSettings:
        if isinstance(stage_cfg, StageConfig | ClipSettings):
            return cls(
                seq_length=stage_cfg.seq_length,
                num_objects=stage_cfg.num_objects,
                crop_size=stage_cfg.crop_size,
                merge_probability=stage_cfg.merge_probability,
                max_skip_schedule=stage_cfg.max_skip_schedule,
                max_skip_schedule_fraction=stage_cfg.max_skip_schedule_fraction,
            )
        plain = OmegaConf.to_container(stage_cfg, resolve=True) if OmegaConf.is_config(stage_cfg) else stage_cfg
        crop = plain["crop_size"]
        crop_hw = (int(crop[0]), int(crop[1])) if isinstance(crop, list | tuple) else (int(crop), int(crop))
        return cls(
            seq_length=int(plain["seq_length"]),
            num_objects=int(plain["num_objects"]),
            crop_size=crop_hw,
            merge_probability=float(plain.get("merge_probability", 0.0)),
            max_skip_schedule=tuple(int(v) for v in plain.get("max_skip_schedule", [5])),
            max_skip_schedule_fraction=tuple(float(v) for v in plain.get("max_skip_schedule_fraction", [0.0])),
        )


def make_recipe_source(
    data_cfg: Any,
    stage_cfg: Any,
    *,
    stage: str,
    data_root: str,
    cache_root: str,
    seed: int,
    world_size: int,
    batch_size: int,
    total_iterations: int,
) -> RecipeSource:
    """Index the stage's datasets (folders and pairing: index.validate checks the files at start-up) and return
    its recipe source (batch_size is per rank)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    data = _plain(data_cfg, data_root, cache_root)
    clip = ClipSettings.of(stage_cfg)
    seq_length, num_objects, crop_hw = clip.seq_length, clip.num_objects, clip.crop_size
    common = dict(seed=seed, global_batch=batch_size * world_size, total_iterations=total_iterations)
    if stage == "pre_training":
        # Structure only: the start-up check (index.validate) read every file; the samplers re-check sizes. SA-1B
        # annotation files decide the samples: they come from the check's cache under cache_root.
        index = build_static_index(data, data_root, cache_root=cache_root, read_files=False)
        sampler = StaticClipSampler(index, seq_length, num_objects, crop_hw)
        return RecipeSource(sampler, stream=STREAM_PRE, **common)
    sampler = VideoClipSampler(
        # Structure only, but through the start-up check's cache: datasets with partial_labels or
        # wrong_size_masks=skip take their frames from the file check.
        build_video_index(data, data_root, seq_length, cache_root=cache_root, read_files=False),
        seq_length,
        num_objects,
        crop_hw,
        clip.merge_probability,
    )
    return RecipeSource(
        sampler,
        stream=STREAM_MAIN,
        max_skip_schedule=list(clip.max_skip_schedule),
        max_skip_fractions=list(clip.max_skip_schedule_fraction),
        **common,
    )


def shared_memory_needed(stage_cfg: Any, *, backend: str, batch_size: int, num_workers: int) -> int:
    """Bytes of /dev/shm one rank's loader of a stage takes (torch backend with workers; 0 otherwise)."""
    if backend != "torch" or num_workers <= 0:
        return 0
    clip = ClipSettings.of(stage_cfg)
    return slot_pool_bytes(num_workers, PREFETCH_FACTOR, batch_size, clip.seq_length, clip.crop_size)


def build_train_loader(
    data_cfg: Any,
    stage_cfg: Any,
    *,
    stage: str,
    data_root: str,
    cache_root: str,
    seed: int,
    rank: int,
    world_size: int,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    backend: str,
    total_iterations: int,
    max_bad_fraction: float = 0.01,
) -> TrainLoader:
    """The training loader of a stage (batch_size per rank). Raises DataValidationError before any worker starts
    when the configured data is unusable."""
    if backend not in ("torch", "dali"):
        raise ValueError(f"loader backend must be 'torch' or 'dali', not {backend!r}")
    source = make_recipe_source(
        data_cfg,
        stage_cfg,
        stage=stage,
        data_root=data_root,
        cache_root=cache_root,
        seed=seed,
        world_size=world_size,
        batch_size=batch_size,
        total_iterations=total_iterations,
    )
    kw = dict(
        num_objects=ClipSettings.of(stage_cfg).num_objects,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        device=torch.device(device),
        max_bad_fraction=max_bad_fraction,
    )
    if backend == "dali":
        from cutie.data.loaders.dali_loader import DaliClipLoader  # imported when asked for (DALI takes seconds)

        return DaliClipLoader(source, num_workers=num_workers, seed=seed, **kw)
    return TorchTrainLoader(source, num_workers=num_workers, **kw)


def batch_to_numpy(batch: dict) -> dict[str, np.ndarray]:
    """A batch's tensors as numpy arrays (tests, debugging)."""
    return {k: v.detach().cpu().numpy() for k, v in batch.items() if torch.is_tensor(v)}

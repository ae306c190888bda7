"""Training clip loaders: the trainer's entry point (`build_train_loader`) and the shared recipe source.

Backends and how they plug in
-----------------------------
`make_recipe_source(data_cfg, stage_cfg, stage=..., data_root=..., cache_root=..., seed=..., world_size=...,
batch_size=..., total_iterations=...) -> RecipeSource` builds (and validates) the dataset index of a stage and
returns a picklable callable `source(global_index, attempt=0) -> ClipRecipe` (cutie/data/recipe.py). Everything
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
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, is_dataclass
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf

from cutie.config.train import STAGES, StageConfig, to_dict
from cutie.data.index import build_static_index, build_video_index
from cutie.data.masks import BadSampleError
from cutie.data.recycle import RecycledArrays
from cutie.data.render import render_recipe_uint8
from cutie.data.rng import STREAM_MAIN, STREAM_PRE
from cutie.data.slots import BatchSlots, slot_pool_bytes, slots_needed
from cutie.data.source import MAX_ATTEMPTS, RecipeSource
from cutie.data.static_sampler import StaticClipSampler
from cutie.data.video_sampler import VideoClipSampler
from cutie.utils import host_memory

log = logging.getLogger(__name__)

MIN_BAD_TO_RAISE = 10  # the bad-sample fraction is only enforced once this many samples failed (noise at start)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


class TooManyBadSamplesError(RuntimeError):
    """More than max_bad_sample_fraction of the drawn samples had unreadable files."""


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
        # Structure only: the start-up check (index.validate) read every file; the samplers re-check sizes.
        index = build_static_index(data, data_root, read_files=False)
        sampler = StaticClipSampler(index, seq_length, num_objects, crop_hw)
        return RecipeSource(sampler, stream=STREAM_PRE, **common)
    sampler = VideoClipSampler(
        build_video_index(data, data_root, seq_length, read_files=False),
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


# --------------------------------------------------------------------------------------------- common loader API


class TrainLoader:
    """Infinite, resumable stream of training batches on `device` (see the module docstring)."""

    def __init__(
        self,
        source: RecipeSource,
        *,
        num_objects: int,
        batch_size: int,
        rank: int,
        world_size: int,
        device: torch.device,
        max_bad_fraction: float = 0.01,
    ) -> None:
        self.source = source
        self.num_objects = num_objects
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.device = torch.device(device)
        self.max_bad_fraction = max_bad_fraction
        self.bad_samples = 0  # draws that hit an unreadable file (replaced)
        self.total_samples = 0  # all draws, good and bad
        self._recent: deque[str] = deque(maxlen=20)
        self._host = RecycledArrays()

    @property
    def recent_bad_paths(self) -> list[str]:
        return list(self._recent)

    def indices_of(self, iteration: int) -> list[int]:
        """Global sample indices of this rank's batch at an iteration."""
        base = iteration * self.batch_size * self.world_size + self.rank * self.batch_size
        return list(range(base, base + self.batch_size))

    def set_max_skip(self, value: int | None) -> None:
        """Override the curriculum's max skip for all later samples (None: follow the schedule)."""
        self.source.set_max_skip(value)

    def max_skip_for(self, iteration: int) -> int | None:
        return self.source.max_skip_for(iteration)

    def _account(self, good: int, bad_paths: list[str]) -> None:
        """Count one batch's draws; raise when the bad fraction passes the limit."""
        self.total_samples += good + len(bad_paths)
        self.bad_samples += len(bad_paths)
        for p in bad_paths:
            log.warning("skipped an unreadable training file: %s", p)
            self._recent.append(p)
        if self.bad_samples >= MIN_BAD_TO_RAISE and self.bad_samples > self.max_bad_fraction * self.total_samples:
            raise TooManyBadSamplesError(
                f"{self.bad_samples} of {self.total_samples} training samples "
                f"({100 * self.bad_samples / self.total_samples:.1f}%) hit unreadable files, more than "
                f"max_bad_sample_fraction={self.max_bad_fraction}; recent: {', '.join(self.recent_bad_paths[-5:])}. "
                f"Fix: run scripts/check_data.py, re-download or delete the files (or raise max_bad_sample_fraction)"
            )

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised batch tensor on the device; on the CPU, recycled memory (cutie/data/recycle.py)."""
        if self.device.type == "cpu":
            return self._host.empty(shape, _NUMPY_DTYPES[dtype])
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _to_batch(self, rgb: torch.Tensor, cls_gt: torch.Tensor, num_objects: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 B*T*3*H*W, uint8 B*T*H*W, int B -> the trainer's batch on the device (docs/architecture.md)."""
        nb = self.device.type == "cuda"
        rgb = rgb.to(self.device, non_blocking=nb)  # uint8 over the bus, converted on the device
        cls_gt = cls_gt.to(self.device, non_blocking=nb)
        num_objects = num_objects.to(self.device, non_blocking=nb).long()  # B
        b, t, _, h, w = rgb.shape
        o = self.num_objects
        ids = torch.arange(1, o + 1, dtype=torch.uint8, device=self.device).view(1, 1, -1, 1, 1)
        selector = (torch.arange(o, device=self.device)[None] < num_objects[:, None]).float()  # B*O
        return {
            "rgb": self._empty(rgb.shape, torch.float32).copy_(rgb).div_(255.0),  # B*T*3*H*W
            "first_frame_gt": self._empty((b, 1, o, h, w), torch.int64).copy_(cls_gt[:, :1, None] == ids),
            "cls_gt": self._empty((b, t, 1, h, w), torch.int64).copy_(cls_gt[:, :, None]),  # B*T*1*H*W
            "selector": selector,
            "num_objects": num_objects,
        }

    def iterate(self, start_iteration: int) -> Iterator[dict]:
        raise NotImplementedError

    def close(self) -> None:
        self.source.close()


# --------------------------------------------------------------------------------------------- torch backend


PREFETCH_FACTOR = 2  # batches per worker in flight


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over (iteration, position, global sample index) keys: recipe (sampler) + render (OpenCV),
    written straight into the batch's shared-memory slot (cutie/data/slots.py)."""

    def __init__(self, source: RecipeSource, slots: BatchSlots, reduced_decode: bool = True) -> None:
        self.source = source
        self.slots = slots
        self.reduced_decode = reduced_decode

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        iteration, j, index = key
        recipe = self.source(index)
        bad = list(recipe.info["bad_paths"])
        slot = self.slots.wait_writable(iteration)
        rgb = self.slots.rgb[slot, j].numpy()  # T*3*H*W uint8, shared with the main process
        for _ in range(MAX_ATTEMPTS):
            try:
                render_recipe_uint8(recipe, self.reduced_decode, out=rgb)
                break
            except BadSampleError as e:
                log.warning("skipping a sample: %s", e)
                bad.append(e.path)
                recipe = self.source(index, attempt=recipe.info["attempt"] + 1)
                bad.extend(recipe.info["bad_paths"])
        else:
            raise RuntimeError(f"sample {index}: {MAX_ATTEMPTS} replacements in a row had corrupt JPEGs: {bad[-3:]}")
        self.slots.cls[slot, j].numpy()[...] = recipe.cls_gt  # T*H*W uint8
        return {"iteration": iteration, "num_objects": recipe.num_objects, "bad_paths": bad, "index": index}


def collate_clips(items: list[dict]) -> dict:
    """The pixels are already in the batch's slot: only the small per-sample values travel through the queue."""
    return {
        "iteration": items[0]["iteration"],
        "num_objects": torch.tensor([it["num_objects"] for it in items], dtype=torch.int64),
        "bad_paths": [p for it in items for p in it["bad_paths"]],
        "indices": [it["index"] for it in items],
    }


class _IterationBatches(torch.utils.data.Sampler):
    """Endless batch sampler: this rank's (iteration, position, global index) keys of iterations start, start+1..."""

    def __init__(self, loader: TrainLoader, start_iteration: int) -> None:
        self.loader, self.start = loader, start_iteration

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        it = self.start
        while True:
            yield [(it, j, g) for j, g in enumerate(self.loader.indices_of(it))]
            it += 1


def _worker_init(_: int) -> None:
    host_memory.keep_freed_memory()  # decoded frames and clips reuse warm heap pages (~25% less CPU per clip)
    cv2.setNumThreads(1)  # one worker = one core; OpenCV's own threads would fight the other workers
    torch.set_num_threads(1)


class TorchTrainLoader(TrainLoader):
    """CPU workers (torch DataLoader) that sample and render with OpenCV into shared-memory batch slots."""

    def __init__(self, source: RecipeSource, *, num_workers: int, reduced_decode: bool = True, **kw: Any) -> None:
        super().__init__(source, **kw)
        self.num_workers = num_workers
        n = slots_needed(num_workers, PREFETCH_FACTOR) if num_workers > 0 else 1
        sampler = source.sampler
        self.slots = BatchSlots(n, self.batch_size, sampler.seq_length, sampler.out_hw, shared=num_workers > 0)
        self.dataset = ClipDataset(source, self.slots, reduced_decode)
        self._iter = None
        self._copy_stream: torch.cuda.Stream | None = None  # set per iterate() on a GPU

    def _shutdown(self) -> None:
        if self._iter is not None:
            shutdown = getattr(self._iter, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._iter = None

    def iterate(self, start_iteration: int) -> Iterator[dict]:
        self._shutdown()
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.slots.reset(start_iteration)
        dl = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_IterationBatches(self, start_iteration),
            num_workers=self.num_workers,
            collate_fn=collate_clips,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            prefetch_factor=PREFETCH_FACTOR if self.num_workers > 0 else None,
        )
        # Fork with OpenCV's thread pool stopped: a forked child inherits the pool's state but not its threads and
        # would hang in its first parallel call (e.g. after a test rendered a recipe in this process).
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            self._iter = iter(dl)
        finally:
            cv2.setNumThreads(threads)
        return self._batches(self._iter)

    def _batches(self, it: Iterator[dict]) -> Iterator[dict]:
        for raw in it:
            self._account(len(raw["indices"]), raw["bad_paths"])
            s = self.slots.slot(raw["iteration"])
            # _to_batch copies out of the slot (synchronously: a copy to a GPU from pageable memory returns once
            # the source has been read), so the slot can go back to the workers right after.
            if self._copy_stream is None:
                batch = self._to_batch(self.slots.rgb[s], self.slots.cls[s], raw["num_objects"])
            else:
                # On a side stream, the copy does not queue behind the step the GPU is running: the host is back
                # as soon as the pageable source has been read, while the GPU still computes.
                with torch.cuda.stream(self._copy_stream):
                    batch = self._to_batch(self.slots.rgb[s], self.slots.cls[s], raw["num_objects"])
                compute = torch.cuda.current_stream(self.device)
                compute.wait_stream(self._copy_stream)  # the next step's kernels wait for the copy, the host does not
                for t in batch.values():
                    t.record_stream(compute)  # the allocator must not reuse them before the step has read them
            self.slots.release(raw["iteration"])
            yield batch

    def close(self) -> None:
        self._shutdown()
        super().close()


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
        from cutie.data.dali_loader import DaliClipLoader  # optional dependency, imported only when asked for

        return DaliClipLoader(source, num_workers=num_workers, seed=seed, **kw)
    return TorchTrainLoader(source, num_workers=num_workers, **kw)


def batch_to_numpy(batch: dict) -> dict[str, np.ndarray]:
    """A batch as numpy arrays (tests, debugging)."""
    return {k: v.detach().cpu().numpy() for k, v in batch.items()}

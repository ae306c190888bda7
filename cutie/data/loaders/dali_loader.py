"""DaliClipLoader: the DALI backend of the training loader (loader=dali), a TrainLoader like the torch backend.

Samples come from the same picklable `recipe_source(global_index) -> ClipRecipe` (cutie/data/sampling/source.py) as the
torch backend, so a sample does not depend on the backend, worker count, thread count or resume point. The
parallel external source maps DALI's sample_info to the global index of the TrainLoader contract: iteration it,
rank r, slot j -> g = it * batch * world + r * batch + j, with it = start_iteration + sample_info.iteration (the
source never ends an epoch, so DALI's iteration counter runs on). The max-skip curriculum needs nothing here: the
recipe source derives it from each sample's own iteration, and its override lives in a shared memory-mapped file
that the forked or spawned source workers read on every call.

Corrupt files: a JPEG that fails inside DALI's decoder kills the whole batch (and the pipeline), so:
1. the recipe source already skips files it cannot read (masks, missing start-of-image marker, bad header);
2. the DALI source screens every JPEG it hands to the decoder with `jpeg_problem` (truncation, invalid markers:
   what made DALI's decoder fail in our checks) and replaces the sample as the torch backend does
   (`source(g, attempt=recipe.info['attempt'] + 1)`), listing the file in the sample's bad paths;
3. a file that passes the screen and still fails in DALI: the loader decodes the JPEGs of the failed and the
   prefetched iterations one by one with DALI's own decoder, adds the culprits to a block list and rebuilds the
   pipeline at the same iteration (the block list makes the source replace those samples). Nothing found: the
   original error is raised.
Skipped files are counted and logged by TrainLoader._account exactly as for the torch backend.

Python workers start with fork on the CPU and with spawn once CUDA is initialised (forking a CUDA process breaks
it, NVIDIA/DALI#3182); spawn needs this module-level, picklable source.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from cutie.data.loaders.base import LoaderFailure, TrainLoader
from cutie.data.loaders.worker_watch import WorkerWatch
from cutie.data.render.dali_graph import (
    OUTPUT_NAMES,
    SourceLayout,
    build_pipeline,
    jpeg_problem,
    pack_recipe,
    renders_on_cpu,
)
from cutie.data.sampling.masks import BadSampleError
from cutie.data.sampling.recipe import ClipRecipe
from cutie.data.sampling.source import MAX_ATTEMPTS
from cutie.utils.stop_signals import leave_trainer_group

log = logging.getLogger(__name__)

MAX_RECOVERIES = 100  # pipeline rebuilds after a decode failure, per iterate() call


def _jpeg_frames(recipe: ClipRecipe) -> list[tuple[bytes, str]]:
    """(bytes, path) of every JPEG that DALI decodes for this recipe (layers with matrices), each file once."""
    seen: dict[str, bytes] = {}
    for k, layer in enumerate(recipe.layers):
        if renders_on_cpu(layer):
            continue  # decoded by OpenCV in the source
        for t, data in enumerate(layer.jpegs):
            path = layer.source_paths[t] if layer.source_paths else f"<layer {k} frame {t}>"
            seen.setdefault(path, data)
    return [(data, path) for path, data in seen.items()]


class DaliSampleSource:
    """`source(sample_info) -> packed recipe` for `fn.external_source(batch=False, parallel=True)`: stateless per
    call and picklable (it carries the recipe source, which is sent to every worker once)."""

    def __init__(
        self,
        recipe_source: Callable[..., ClipRecipe],
        layout: SourceLayout,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start_iteration: int = 0,
        blocked: frozenset[str] = frozenset(),
    ) -> None:
        self.recipe_source = recipe_source
        self.layout = layout
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.start_iteration = int(start_iteration)
        self.blocked = frozenset(blocked)  # files that failed in DALI's decoder earlier in this run
        self.trainer_pid = os.getpid()

    def global_index(self, iteration: int, slot: int) -> int:
        """The global sample index of slot `slot` of this rank's batch at DALI iteration `iteration`."""
        it = self.start_iteration + iteration
        return (it * self.world_size + self.rank) * self.batch_size + slot

    def _problem(self, recipe: ClipRecipe) -> tuple[str, str] | None:
        for data, path in _jpeg_frames(recipe):
            reason = "failed in DALI's decoder" if path in self.blocked else jpeg_problem(data)
            if reason is not None:
                return path, reason
        return None

    def draw(self, index: int, pack: bool = True) -> tuple[Any, list[str]]:
        """(packed sample, or the recipe when pack=False; skipped files) of a global index, replacing draws whose
        JPEGs DALI cannot decode. Without packing, CPU-rendered layers are not decoded (DALI never decodes them)."""
        recipe = self.recipe_source(index)
        bad = list((recipe.info or {}).get("bad_paths", ()))
        for _ in range(MAX_ATTEMPTS):
            problem = self._problem(recipe)
            if problem is None:
                if not pack:
                    return recipe, bad
                try:
                    return pack_recipe(recipe, self.layout, index=index, bad_paths=bad), bad
                except BadSampleError as e:  # a CPU-rendered layer's JPEG failed in OpenCV
                    problem = (e.path, "corrupt JPEG (decoder failed)")
            log.warning("skipping a sample: %s: %s", *problem)
            bad.append(problem[0])
            recipe = self.recipe_source(index, attempt=recipe.info["attempt"] + 1)
            bad.extend(recipe.info.get("bad_paths", ()))
        raise RuntimeError(f"sample {index}: {MAX_ATTEMPTS} replacements in a row had corrupt JPEGs: {bad[-3:]}")

    def _leave_trainer_group(self) -> None:
        # in a worker (not the trainer) that does not lead a process group of its own yet
        if os.getpid() not in (self.trainer_pid, os.getpgrp()):
            leave_trainer_group(self.trainer_pid)

    def __setstate__(self, state: dict) -> None:
        # "spawn" workers unpickle the source as they start: they leave the trainer's group before any work
        self.__dict__.update(state)
        self._leave_trainer_group()

    def __call__(self, sample_info: Any) -> tuple:
        # "fork" workers (not unpickled) leave the group at their first sample, which the pipeline asks for as it
        # is built: a stop signal within those milliseconds would still reach them
        self._leave_trainer_group()
        return self.draw(self.global_index(sample_info.iteration, sample_info.idx_in_batch))[0]


class _DaliDecodeCheck:
    """Decodes one JPEG at a time with DALI's decoder (same device kind as training) to find files it rejects."""

    def __init__(self, device_id: int | None) -> None:
        self.device_id = device_id
        self._data = np.zeros(0, np.uint8)
        self._pipe = None

    def _build(self) -> None:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def
        def _check():
            enc = fn.external_source(source=lambda: [self._data], dtype=types.UINT8)
            return fn.decoders.image(enc, device="cpu" if self.device_id is None else "mixed")

        self._pipe = _check(batch_size=1, num_threads=1, device_id=self.device_id, prefetch_queue_depth=1)
        self._pipe.build()

    def ok(self, data: bytes) -> bool:
        if self._pipe is None:
            self._build()
        self._data = np.frombuffer(data, np.uint8)
        try:
            self._pipe.run()
            return True
        except RuntimeError:
            self._pipe = None  # a failed pipeline cannot run again
            return False


def layout_of(source: Any, seq_length=None, crop_size=None, max_layers=None) -> SourceLayout:
    """The packed-sample layout of a recipe source (its sampler's clip length, crop and most layers per clip)."""
    sampler = getattr(source, "sampler", None)
    try:
        t = int(seq_length if seq_length is not None else sampler.seq_length)
        hw = crop_size if crop_size is not None else sampler.out_hw
        if max_layers is None:
            if hasattr(sampler, "merge_probability"):  # video clips: a merge adds one layer
                max_layers = 2 if sampler.merge_probability > 0 else 1
            else:  # static clips: one layer per object
                max_layers = max(1, int(sampler.num_objects))
    except AttributeError as e:
        raise TypeError(
            f"DaliClipLoader cannot read the clip layout from {type(source).__name__} ({e}); pass seq_length, "
            "crop_size and max_layers"
        ) from e
    return SourceLayout(t, (int(hw[0]), int(hw[1])), int(max_layers))


class DaliClipLoader(TrainLoader):
    """Training batches rendered by DALI: `iterate(start_iteration)` yields batch dicts on `device` forever."""

    def __init__(
        self,
        source: Any,
        *,
        num_workers: int,
        seed: int = 0,
        num_threads: int | None = None,
        prefetch_queue_depth: int = 2,
        seq_length: int | None = None,
        crop_size: tuple[int, int] | None = None,
        max_layers: int | None = None,
        start_method: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(source, **kw)
        self.start_method = start_method  # of the Python workers; None: fork, spawn once CUDA is initialized
        self.layout = layout_of(source, seq_length, crop_size, max_layers)
        self.num_workers = max(1, int(num_workers))  # Python workers: sampling, packing, CPU-rendered layers
        self.num_threads = max(1, int(num_threads if num_threads is not None else num_workers))  # DALI's threads
        self.prefetch_queue_depth = int(prefetch_queue_depth)
        self.seed = int(seed)
        self.blocked: set[str] = set()
        self._pipe = None
        self._watch: WorkerWatch | None = None

    @staticmethod
    def _default_start_method() -> str:
        return "spawn" if torch.cuda.is_available() and torch.cuda.is_initialized() else "fork"  # fork after CUDA fails

    def _device_id(self) -> int | None:
        return (self.device.index or 0) if self.device.type == "cuda" else None

    def _start(self, iteration: int) -> None:
        self._shutdown()
        source = DaliSampleSource(
            self.source,
            self.layout,
            self.batch_size,
            self.rank,
            self.world_size,
            iteration,
            frozenset(self.blocked),
        )
        before = set(multiprocessing.active_children())
        self._pipe = build_pipeline(
            source,
            self.layout,
            batch_size=self.batch_size,
            device_id=self._device_id(),
            num_threads=self.num_threads,
            py_num_workers=self.num_workers,
            seed=self.seed + self.rank,  # the graph draws nothing itself: samples come from the recipe source
            prefetch_queue_depth=self.prefetch_queue_depth,
            py_start_method=self.start_method or self._default_start_method(),
        )
        # DALI's Python workers: one that dies could leave the main thread blocked in DALI for ever.
        self._watch = WorkerWatch([p for p in multiprocessing.active_children() if p not in before], self.num_workers)

    def iterate(self, start_iteration: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of iterations start_iteration, start_iteration + 1, ... (a new pipeline per call)."""
        self._start(start_iteration)
        return self._batches(start_iteration)

    def _batches(self, iteration: int) -> Iterator[dict[str, torch.Tensor]]:
        recoveries = 0
        while True:
            try:
                with self._watch.inside():
                    out = dict(zip(OUTPUT_NAMES, self._pipe.run(), strict=True))
            except LoaderFailure:
                raise
            except RuntimeError:  # DALI reports operator failures as RuntimeError
                self._watch.check(settle=5)  # a worker that died: DALI's own error says only "interrupted"
                if recoveries >= MAX_RECOVERIES or not self._recover(iteration):
                    raise
                recoveries += 1
                continue
            # Copies: DALI reuses its output buffers at the next run.
            bad = [np.array(out["bad_paths"][j]).tobytes().decode() for j in range(self.batch_size)]
            self._account(self.batch_size, [p for paths in bad if paths for p in paths.split("\n")])
            rgb = self._to_torch(out["rgb"])  # B*T*3*H*W uint8
            cls_gt = self._to_torch(out["cls_gt"])  # B*T*H*W uint8 (on the GPU from a device pipeline)
            num_objects = torch.from_numpy(np.array(out["num_objects"].as_tensor())).reshape(-1)  # B
            yield self._to_batch(rgb, cls_gt, num_objects)
            iteration += 1

    def _to_torch(self, batch) -> torch.Tensor:
        """A uint8 DALI batch as one torch tensor: a copy on the CPU, or on the device for a GPU batch."""
        from nvidia.dali.tensors import TensorGPU

        dense = batch.as_tensor()
        if not isinstance(dense, TensorGPU):
            return torch.from_numpy(np.array(dense))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        out = torch.empty(dense.shape(), dtype=torch.uint8, device=self.device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(self.device))
        return out

    def _recover(self, iteration: int) -> bool:
        """Finds the files DALI failed on near `iteration`, blocks them and restarts there. False: none found."""
        self._shutdown()
        check = _DaliDecodeCheck(self._device_id())
        source = DaliSampleSource(
            self.source, self.layout, self.batch_size, self.rank, self.world_size, 0, frozenset(self.blocked)
        )
        culprits = set()
        for it in range(iteration, iteration + self.prefetch_queue_depth + 2):  # what DALI may have run ahead
            for g in self.indices_of(it):
                recipe, _ = source.draw(g, pack=False)  # the draw the pipeline rendered
                culprits |= {path for data, path in _jpeg_frames(recipe) if not check.ok(data)}
        if not culprits:
            log.error("DALI pipeline failed at iteration %d and no undecodable JPEG was found", iteration)
            return False
        log.warning("DALI could not decode %s; blocking and restarting at iteration %d", sorted(culprits), iteration)
        self.blocked |= culprits
        self._start(iteration)
        return True

    def _shutdown(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        # Dropping the last references shuts the pipeline and its Python workers down (DALI's finalizers).
        self._pipe = None
        gc.collect()

    def close(self) -> None:
        self._shutdown()
        super().close()

"""The torch backend: worker processes render recipes (OpenCV) straight into shared-memory batch slots;
the main process turns a slot into the batch on the device."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from functools import partial
from typing import Any

import cv2
import torch

from cutie.data.loaders import pinned
from cutie.data.loaders.base import LoaderFailure, TrainLoader
from cutie.data.loaders.slots import BatchSlots, slots_needed
from cutie.data.loaders.worker_watch import failure_message
from cutie.data.render.cpu import render_recipe_uint8
from cutie.data.sampling.masks import BadSampleError
from cutie.data.sampling.source import MAX_ATTEMPTS, RecipeSource
from cutie.utils import host_memory
from cutie.utils.stop_signals import leave_trainer_group

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- torch backend


PREFETCH_FACTOR = 2  # batches per worker in flight


class ClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over (iteration, position, global sample index) keys: recipe (sampler) + render (OpenCV),
    written straight into the batch's shared-memory slot (cutie/data/loaders/slots.py)."""

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


def _worker_init(trainer_pid: int, _: int) -> None:
    leave_trainer_group(trainer_pid)  # a stop signal to the trainer's group is the trainer's to handle
    host_memory.keep_freed_memory()  # decoded frames and clips reuse warm heap pages (~25% less CPU per clip)
    cv2.setNumThreads(1)  # one worker = one core; OpenCV's own threads would fight the other workers
    torch.set_num_threads(1)


def keep_for(batch: dict, stream: torch.cuda.Stream) -> None:
    """Marks the batch's tensors (made on the copy stream) as used by `stream`: the allocator must not reuse them
    before the step queued there has read them. Host values (`object_counts`) need nothing."""
    for value in batch.values():
        if torch.is_tensor(value):
            value.record_stream(stream)


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
        self._pinned: list[torch.Tensor] = []  # the slots while page-locked (cutie/data/loaders/pinned.py)

    @property
    def page_locked(self) -> bool:
        """Whether the batch slots are page-locked for the GPU now (between iterate() and close())."""
        return bool(self._pinned)

    def _shutdown(self) -> None:
        if self._copy_stream is not None:
            self._copy_stream.synchronize()  # no copy may still read a slot once the workers are gone
        if self._pinned:
            pinned.unregister(self._pinned)  # before new workers fork (the driver may hide locked pages from them)
            self._pinned = []
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
            worker_init_fn=partial(_worker_init, os.getpid()) if self.num_workers > 0 else None,
            prefetch_factor=PREFETCH_FACTOR if self.num_workers > 0 else None,
        )
        # Fork with OpenCV's thread pool stopped: a forked child inherits the pool's state but not its threads and
        # would hang in its first parallel call (e.g. after a test rendered a recipe in this process).
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        main_thread = threading.current_thread() is threading.main_thread()
        sigchld = signal.getsignal(signal.SIGCHLD) if main_thread else None
        try:
            self._iter = iter(dl)
        finally:
            cv2.setNumThreads(threads)
            # torch's SIGCHLD handler (installed by the first iterator) raises a worker's death in the main thread
            # wherever it is: inside a step's update or a checkpoint write. Without it the death comes out of
            # next() (torch checks its workers while it waits on them): between two steps, where the stage stops
            # with a checkpoint of the completed ones (cutie/training/loop.py).
            if main_thread and sigchld is not None:
                signal.signal(signal.SIGCHLD, sigchld)
        if self._copy_stream is not None:
            self._pinned = pinned.register([self.slots.rgb, self.slots.cls])  # after the workers have forked
        return self._batches(self._iter)

    def _next(self, it: Iterator[dict]) -> dict | None:
        """The next raw batch (None at the end); a worker that died is a LoaderFailure naming it and the fix."""
        try:
            return next(it)
        except StopIteration:
            return None
        except RuntimeError as e:
            ended = [w for w in getattr(self._iter, "_workers", ()) if w.exitcode is not None]
            if not ended:
                raise
            raise LoaderFailure(failure_message([(w.pid, w.exitcode) for w in ended], self.num_workers)) from e

    def _batches(self, it: Iterator[dict]) -> Iterator[dict]:
        copied: tuple[int, torch.cuda.Event] | None = None  # a page-locked slot whose copy may still be running
        while (raw := self._next(it)) is not None:
            self._account(len(raw["indices"]), raw["bad_paths"])
            s = self.slots.slot(raw["iteration"])
            if self._copy_stream is None:
                # On the CPU _to_batch copies out of the slot before it returns: the slot is free right after.
                batch = self._to_batch(self.slots.rgb[s], self.slots.cls[s], raw["num_objects"])
                self.slots.release(raw["iteration"])
                yield batch
                continue
            # On a side stream, the copy does not queue behind the step the GPU is running. From pageable memory
            # the host is back once the source has been read; from page-locked slots at once (DMA).
            with torch.cuda.stream(self._copy_stream):
                batch = self._to_batch(self.slots.rgb[s], self.slots.cls[s], raw["num_objects"])
            compute = torch.cuda.current_stream(self.device)
            compute.wait_stream(self._copy_stream)  # the next step's kernels wait for the copy, the host does not
            keep_for(batch, compute)
            if not self._pinned:
                self.slots.release(raw["iteration"])
            else:
                # A page-locked slot is still being read by the DMA: hand back the previous batch's slot instead,
                # whose copy has long finished (the slot pool keeps one spare for this: slots_needed()).
                done = torch.cuda.Event()
                done.record(self._copy_stream)
                if copied is not None:
                    copied[1].synchronize()
                    self.slots.release(copied[0])
                copied = (raw["iteration"], done)
            yield batch

    def close(self) -> None:
        self._shutdown()
        super().close()

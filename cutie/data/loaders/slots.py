"""Shared-memory batch slots, reused round-robin between the torch backend's workers and the main process.

Why: PyTorch's DataLoader puts every batch into a new shared-memory segment, which the worker faults in page by
page while writing and the main process faults in again while reading. For main-training clips (7.4 MB each as
uint8) that churn cost ~8 ms of CPU per clip on the 2-core machine, more than colour and warps together. Here the
segments are made once; a worker renders each sample straight into its place in a slot and the main process
converts the slot into the trainer's batch, after which the slot is free again.

Protocol (correct whatever order the workers run in): batch `it` uses slot `it % n`. `ready[s]` holds the only
iteration allowed to write slot s next. A worker waits until `ready[slot] == it` before writing; the main process
sets `ready[slot] = it + n` once it has converted batch `it`. The DataLoader keeps at most
`workers * prefetch_factor` batches in flight, so with n above that a worker never actually waits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time

import numpy as np
import torch

log = logging.getLogger(__name__)

WAIT_WARN_S = 600.0  # a worker waiting this long for a slot means the main process stopped consuming


class SharedMemoryTooSmallError(RuntimeError):
    """/dev/shm cannot hold the loader's batch slots."""


def slots_needed(num_workers: int, prefetch_factor: int) -> int:
    """Slots for every batch that can be in flight, plus the one being converted, plus one spare (used on a GPU,
    where a page-locked slot goes back one batch late, once its copy has finished: cutie/data/loaders/pinned.py)."""
    return max(1, num_workers * prefetch_factor) + 2


def slot_pool_bytes(num_workers: int, prefetch_factor: int, batch_size: int, seq_length: int, out_hw) -> int:
    """Shared memory of one loader's slots (rgb + cls, uint8)."""
    h, w = out_hw
    return slots_needed(num_workers, prefetch_factor) * batch_size * seq_length * 4 * h * w


def check_shared_memory(nbytes: int, where: str = "/dev/shm") -> None:
    """Fail before any worker starts when the shared-memory filesystem cannot hold `nbytes` (Docker's default
    /dev/shm is 64 MB; writing past it kills a worker with SIGBUS in the middle of training)."""
    if not os.path.isdir(where):
        return
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    if free < nbytes:
        raise SharedMemoryTooSmallError(
            f"the loader needs {nbytes / 2**20:.0f} MiB of shared memory for its batch slots but {where} has "
            f"{free / 2**20:.0f} MiB free. Fix: give the container more (docker run --shm-size=16g, or compose "
            f"`ipc: host` / `shm_size: 16gb`), or lower num_workers or the batch size"
        )


class BatchSlots:
    """`n` uint8 batch buffers in shared memory: rgb n*B*T*3*H*W, cls n*B*T*H*W; picklable to worker processes."""

    def __init__(self, n: int, batch_size: int, seq_length: int, out_hw: tuple[int, int], shared: bool = True):
        h, w = out_hw
        self.n = n
        rgb_shape, cls_shape = (n, batch_size, seq_length, 3, h, w), (n, batch_size, seq_length, h, w)
        if shared:
            check_shared_memory(int(np.prod(rgb_shape)) + int(np.prod(cls_shape)))
        self.rgb = torch.empty(rgb_shape, dtype=torch.uint8)  # n*B*T*3*H*W
        self.cls = torch.empty(cls_shape, dtype=torch.uint8)  # n*B*T*H*W
        if shared:
            self.rgb.share_memory_()
            self.cls.share_memory_()
        self.ready = multiprocessing.Array("q", n)  # with its own lock: every access is a memory barrier
        self.reset(0)

    def slot(self, iteration: int) -> int:
        return iteration % self.n

    def reset(self, start_iteration: int) -> None:
        """Before workers start at `start_iteration`: slot s is next written by the first iteration >= start
        that maps to it."""
        with self.ready.get_lock():
            for s in range(self.n):
                self.ready[s] = start_iteration + (s - start_iteration) % self.n

    def wait_writable(self, iteration: int) -> int:
        """Block until batch `iteration` may write its slot; returns the slot."""
        s = self.slot(iteration)
        start = last_warn = time.monotonic()
        delay = 0.0002  # backs off to 10 ms: never a busy loop, even if a worker runs far ahead
        while True:
            with self.ready.get_lock():
                allowed = self.ready[s]
            if allowed == iteration:
                return s
            if allowed > iteration:
                raise RuntimeError(f"batch slot {s}: iteration {iteration} is older than the slot ({allowed})")
            time.sleep(delay)
            delay = min(2 * delay, 0.01)
            now = time.monotonic()
            if now - last_warn > WAIT_WARN_S:
                last_warn = now
                log.warning(
                    f"loader worker: waited {now - start:.0f} s for batch slot {s} (iteration {iteration}); "
                    "is the training process still consuming batches?"
                )

    def release(self, iteration: int) -> None:
        """The main process has finished reading batch `iteration`: its slot goes to iteration + n."""
        with self.ready.get_lock():
            self.ready[self.slot(iteration)] = iteration + self.n

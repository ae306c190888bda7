"""The loader API every backend implements: `TrainLoader` (batch bookkeeping, the batch format, bad-sample
accounting). See cutie/data/loaders/build.py for how a stage gets its loader."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from cutie.data.loaders.recycle import RecycledArrays
from cutie.data.sampling.source import RecipeSource

log = logging.getLogger(__name__)

MIN_BAD_TO_RAISE = 10  # the bad-sample fraction is only enforced once this many samples failed (noise at start)


_NUMPY_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


class TooManyBadSamplesError(RuntimeError):
    """More than max_bad_sample_fraction of the drawn samples had unreadable files."""


class LoaderFailure(RuntimeError):
    """The loader itself broke, not a sample: a worker process ended (the kernel's out-of-memory killer, a crash).
    The message names the workers, how they ended and the fix."""


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
        """An uninitialised batch tensor on the device; on the CPU, recycled memory (cutie/data/loaders/recycle.py)."""
        if self.device.type == "cpu":
            return self._host.empty(shape, _NUMPY_DTYPES[dtype])
        return torch.empty(shape, dtype=dtype, device=self.device)

    def _to_batch(self, rgb: torch.Tensor, cls_gt: torch.Tensor, num_objects: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 B*T*3*H*W, uint8 B*T*H*W, int B -> the trainer's batch on the device (docs/architecture.md)."""
        nb = self.device.type == "cuda"
        counts = tuple(int(n) for n in num_objects.reshape(-1).tolist())  # on the host: read without a GPU wait
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
            "object_counts": counts,  # the same counts as host ints (the model cuts its object slots with them)
        }

    def iterate(self, start_iteration: int) -> Iterator[dict]:
        raise NotImplementedError

    def close(self) -> None:
        self.source.close()

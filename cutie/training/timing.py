"""Step times without a host synchronisation: CUDA events on a GPU (read at log steps), the host clock on the CPU."""

from __future__ import annotations

import time

import torch


class Elapsed:
    """A started-and-stopped interval; `seconds()` waits for the end event on CUDA, so call it at log steps only."""

    def __init__(self, start: object, end: object) -> None:
        self.start, self.end = start, end

    def seconds(self) -> float:
        if isinstance(self.start, float):
            return self.end - self.start
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1000.0


class StepTimer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()  # queued on the current stream: it completes when the work queued before it does
        return e

    def since(self, start: object) -> Elapsed:
        return Elapsed(start, self.mark())


def seconds(value: float | Elapsed) -> float:
    return value.seconds() if isinstance(value, Elapsed) else float(value)

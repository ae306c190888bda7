"""Running the inference procedure over the videos of a dataset: index masks per frame, timing, memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cutie.inference.processor import VideoProcessor
from cutie.inference.settings import InferenceSettings
from cutie.inference.video_io import Frame, FrameSource


@dataclass
class Timer:
    """Processing time of the network steps only (reading and writing files excluded)."""

    frames: int = 0
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("nan")


class InferenceOutOfMemory(RuntimeError):
    """A frame the network cannot process in the device's memory; names the video, the frame, its size and the
    objects tracked (`objects`), so that the caller can add the setting to change."""

    def __init__(self, message: str, objects: int) -> None:
        super().__init__(message)
        self.objects = objects


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_video(
    network: torch.nn.Module,
    reader: FrameSource,
    settings: InferenceSettings,
    device: torch.device,
    timer: Timer | None = None,
) -> Iterator[tuple[Frame, np.ndarray]]:
    """Yields (frame, H*W uint8 object ids at the original size) for every frame in order. Frames before the
    first annotated one carry no known object and come out as background."""
    processor = VideoProcessor(network, settings)
    started = False
    last = len(reader) - 1
    for t, frame in enumerate(reader):
        if not started and frame.mask is None:
            yield frame, np.zeros(frame.size, dtype=np.uint8)
            continue
        started = True
        _sync(device)
        tic = time.perf_counter()
        mask = None if frame.mask is None else frame.mask.to(device)
        try:
            prob = processor.step(frame.image.to(device), mask, end=t == last)  # (O+1)*h*w
        except torch.OutOfMemoryError as e:
            given = set() if mask is None else {int(v) for v in torch.unique(mask) if v != 0}
            objects = len(set(processor.object_ids) | given)
            h, w = frame.image.shape[-2:]
            raise InferenceOutOfMemory(
                f"video {reader.name}, frame {frame.name} ({h}x{w}, {objects} object(s)): the network needs more "
                f"memory than {device} has",
                objects,
            ) from e
        if tuple(prob.shape[-2:]) != frame.size:  # the reader downsized this video: back to the original size
            prob = F.interpolate(prob[None].float(), size=frame.size, mode="bilinear", align_corners=False)[0]
        ids = processor.index_mask(prob)
        _sync(device)
        if timer is not None:
            timer.frames += 1
            timer.seconds += time.perf_counter() - tic
        if int(ids.max()) > 255:
            raise ValueError(f"{reader.name}/{frame.name}: object id {int(ids.max())} does not fit an 8-bit PNG")
        yield frame, ids.to(torch.uint8).cpu().numpy()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run: allocated CUDA memory on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10

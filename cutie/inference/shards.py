"""Validation over several processes: which videos each rank segments, and the exact merge of their scores.

Every rank segments its share of the validation videos on its own device and scores them; the per-object
records (cutie/metrics/davis.py: ObjectResult, Unscored) of every rank reach every rank, and each puts them back
in video order, so the global table is computed from the same list, in the same order, as one process computes
it: bit-identical, and the same on every rank (every rank then agrees on the best score)."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass, field

from cutie.inference.runner import InferenceOutOfMemory
from cutie.metrics.davis import DavisReport, ObjectResult, Unscored
from cutie.utils.atomic import DiskFullError


class DistributedValidationError(RuntimeError):
    """Validation failed on a rank, or the ranks disagree on the set: every rank raises it with one message."""


@dataclass
class VideoScores:
    index: int  # the video's position in the validation list
    objects: list[ObjectResult]
    unscored: list[Unscored]


@dataclass
class RankShare:
    """What one rank sends to the others after its share: its scores, or why it stopped."""

    rank: int
    videos: tuple[str, ...]  # the validation list as this rank read it (all ranks must read the same)
    scores: list[VideoScores] = field(default_factory=list)
    frames: int = 0  # network steps (runner.Timer)
    seconds: float = 0.0
    error: str | None = None  # "<video>: <type>: <message>" of the failure that ended this rank's share
    disk_full: bool = False
    out_of_memory: int | None = None  # the failure was InferenceOutOfMemory: the objects it tracked


def balanced_shards(frame_counts: Sequence[int], world_size: int) -> list[list[int]]:
    """Video indices per rank, each share in video order. Longest videos first, each to the rank with the
    fewest frames so far (ties: the lower rank). Not `i % world_size`: inference time follows the frames, DAVIS
    2017 val's videos have 25 to 104, and every rank waits for the slowest; this greedy split keeps the slowest
    within 4/3 of the best one. It depends on the counts only, so every rank computes the same split."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    loads = [0] * world_size
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(range(len(frame_counts)), key=lambda i: (-frame_counts[i], i)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shares[rank].append(i)
        loads[rank] += frame_counts[i]
    return [sorted(s) for s in shares]


def merge(shares: Sequence[RankShare]) -> tuple[DavisReport, int, float]:
    """(the report over all videos in video order, frames segmented, the slowest rank's network seconds).
    Every rank holds the same shares, so every rank returns the same or raises the same error: a rank failed
    (DiskFullError when it ran out of space, InferenceOutOfMemory when every failed rank ran out of device
    memory, else DistributedValidationError naming rank, video and error), or the ranks read different lists or
    splits of the videos."""
    failed = [s for s in shares if s.error is not None]
    if failed:
        more = f" (and on rank(s) {', '.join(str(s.rank) for s in failed[1:])})" if len(failed) > 1 else ""
        message = f"validation failed on rank {failed[0].rank}{more}: {failed[0].error}"
        if any(s.disk_full for s in failed):
            raise DiskFullError(errno.ENOSPC, message)
        if all(s.out_of_memory is not None for s in failed):  # the caller may go on (training) or name the fix
            raise InferenceOutOfMemory(message, max(s.out_of_memory for s in failed))
        raise DistributedValidationError(message)
    videos = shares[0].videos
    differ = [s.rank for s in shares if s.videos != videos]
    if differ:
        raise DistributedValidationError(
            f"rank(s) {differ} read another list of validation videos than rank 0 ({len(videos)} videos); "
            "fix: every rank must see the same validation set (the same data_root on every node)"
        )
    by_index: dict[int, VideoScores] = {}
    for share in shares:
        for v in share.scores:
            if v.index in by_index or not 0 <= v.index < len(videos):
                raise DistributedValidationError(f"video {v.index} scored twice or out of range (rank {share.rank})")
            by_index[v.index] = v
    missing = [videos[i] for i in range(len(videos)) if i not in by_index]
    if missing:
        raise DistributedValidationError(
            f"no rank segmented {missing[:5]}: the ranks split the videos differently (different frame counts "
            "per node?); fix: every rank must see the same validation set"
        )
    report = DavisReport([])
    for i in range(len(videos)):
        report.objects += by_index[i].objects
        report.unscored += by_index[i].unscored
    return report, sum(s.frames for s in shares), max(s.seconds for s in shares)

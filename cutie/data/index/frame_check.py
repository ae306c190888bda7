"""Per-file checks of training frames and masks: every file, fast, in parallel, cached.

What is checked (enough to catch what would break or silently corrupt training):
- JPEG: start-of-image marker, the segment walk up to start-of-scan (size and channels from the frame header),
  and the end-of-image marker in the last 4 KB (the same rule as the training reader `masks.read_bytes`).
  The entropy-coded data is not decoded: a cut file loses its end-of-image marker, which is what is looked for.
- PNG: signature, every chunk complete with a correct CRC, IHDR sane, IEND present, and the image data
  inflated completely (zlib stream ended, exactly the bytes the header promises, valid row filter types).
  Inflating is cheaper than PIL's full `load()`, which also unfilters and expands rows (854x480 masks: 1.6x for
  8-bit palette, 6x for 1-bit; docs/benchmarks.md), and finds the same truncation and corruption. 16-bit grey
  masks are decoded in full to check that their ids fit 0..255.
- PNG with ids (kind 'png_ids', asked for datasets that need the objects of each mask: partial-label detection,
  cutie/data/index/scan.py): the same checks, then the mask decoded in full for the set of object ids it holds.

Results of good files are cached per dataset in a JSON file keyed on (path, size, mtime_ns)
(cutie/data/index/stamped_cache.py); a file whose size or mtime changed is checked again. The cache is untrusted
input: it is parsed defensively and ignored (with a note) when malformed. Bad files are never cached, so they are
re-read (and re-reported) every time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cutie.data.index.stamped_cache import Keeper, Stamp, StampedCache, cache_path, is_count, split
from cutie.utils.image_files import MAX_PIXELS, FileInfo, FileResult, check_file, unreadable
from cutie.utils.stop_signals import quiet_pool_worker

CACHE_VERSION = 2  # 2: entries carry the object ids of a mask (or null)
INLINE_BELOW = 256  # fewer files than this are checked in-process (a pool costs more than it saves)
PROGRESS_FROM = 2000  # files to read before a progress bar / progress lines are shown
PROGRESS_EVERY_S = 10.0  # progress line interval when stderr is not a terminal (logs)


def _check_task(task: tuple[str, str]) -> tuple[str, FileResult]:
    return task[0], check_file(*task)


# ----------------------------------------------------------------------------------------------- cache


def cache_file(cache_root: str | os.PathLike, key: str) -> Path:
    """The cache of one dataset (key: its folders), under cache_root/data_check/."""
    return cache_path(cache_root, "", key)


def _parse_ids(value: object) -> tuple[int, ...] | None | bool:
    """A cached id list as a tuple, None for null, False when malformed."""
    if value is None:
        return None
    if not (isinstance(value, list) and all(is_count(v) and 0 < v <= 255 for v in value)):
        return False
    return tuple(value)


def _parse_info(payload: list) -> FileInfo | None:
    """A cached FileInfo from its untrusted JSON form [width, height, mode, wide_ids, ids or null]."""
    if len(payload) != 5:
        return None
    w, h, mode, wide, raw_ids = payload
    ids = _parse_ids(raw_ids)
    ints = is_count(w) and is_count(h) and w * h <= MAX_PIXELS  # the cache is untrusted too
    if not ints or not isinstance(mode, str) or not isinstance(wide, bool) or len(mode) > 8 or ids is False:
        return None
    return FileInfo(w, h, mode, wide, ids)


def _encode_info(i: FileInfo) -> list:
    return [i.width, i.height, i.mode, i.wide_ids, None if i.ids is None else list(i.ids)]


def _cache(cache_root: str | os.PathLike, key: str) -> StampedCache[FileInfo]:
    """The check cache of `key` (see cutie/data/index/stamped_cache.py for its format and rules)."""
    return StampedCache(cache_file(cache_root, key), key, CACHE_VERSION, _parse_info, _encode_info)


def _answers(task: tuple[str, str], info: FileInfo) -> bool:
    # An entry without ids does not answer a 'png_ids' task (checked under 'png' before).
    return task[1] != "png_ids" or info.ids is not None


# ----------------------------------------------------------------------------------------------- many files


@dataclass
class CheckStats:
    files: int = 0  # files asked about
    read: int = 0  # files actually opened and checked (the rest came from the cache)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _workers(n: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, n // INLINE_BELOW))


class _Progress:
    """A tqdm bar on a terminal; otherwise a line with the ETA every PROGRESS_EVERY_S (for logs)."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done = total, desc, 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        self.quiet = total < PROGRESS_FROM
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="file", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.quiet or now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        print(
            f"{self.desc}: {self.done}/{self.total} files ({100 * self.done / self.total:.0f}%), "
            f"{now - self.start:.0f} s, ETA {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_checks(tasks: Sequence[tuple[str, str]], desc: str) -> Iterator[tuple[str, FileResult]]:
    workers = _workers(len(tasks))
    if workers <= 1:
        yield from map(_check_task, tasks)
        return
    # fork where available: workers start at once and need no re-import (they only read files).
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers, initializer=partial(quiet_pool_worker, os.getpid())) as pool:
        yield from pool.imap_unordered(_check_task, tasks, chunksize=64)


def check_files(
    tasks: Sequence[tuple[str, str]], cache_root: str | os.PathLike | None, key: str, desc: str = "check"
) -> tuple[dict[str, FileResult], CheckStats]:
    """Check files given as (path, 'jpeg'|'png'); results of good files come from / go to the cache of `key`
    under cache_root (None: no cache)."""
    start = time.perf_counter()
    stats = CheckStats(files=len(tasks))
    cache = None if cache_root is None else _cache(cache_root, key)
    cached: dict[str, tuple[Stamp, FileInfo]] = {}
    if cache is not None:
        cached, note = cache.load()
        if note:
            stats.notes.append(note)
    plan = split(tasks, cached, _answers)
    results: dict[str, FileResult] = {p: unreadable(e) for p, e in plan.unreadable.items()}
    results.update((p, info) for p, (_, info) in plan.hits.items())
    stats.read = len(plan.todo)
    progress = _Progress(len(plan.todo), desc)
    # Entries that left the cache (changed or gone files) make the first save due even if nothing is read.
    # closing(): a stop raised between two results ends the pool now, not when the traceback is let go
    with (
        Keeper(cache, plan.hits, dirty=len(plan.hits) != len(cached)) as keep,
        closing(_run_checks(plan.todo, desc)) as done,
    ):
        try:
            for file_path, result in done:
                results[file_path] = result
                if isinstance(result, FileInfo):
                    keep.add(file_path, plan.entry(file_path, result))
                progress.update()
        finally:
            progress.close()
    stats.notes += keep.notes
    stats.seconds = time.perf_counter() - start
    return results, stats

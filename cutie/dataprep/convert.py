"""The conversion runner shared by the BURST and OVIS converters: resumable, parallel, per-video failures.

Output layout (DAVIS / YouTube-VOS style, what the training loader reads):

    <output>/JPEGImages/<video>/<frame>.jpg      source frames, copied byte for byte
    <output>/Annotations/<video>/<frame>.png     palette PNG (DAVIS palette), pixel value = object id, 0 = none
    <output>/_meta/<video>.json                  completion marker + id map (the loader never looks here)

Guarantees:
- The whole annotation file is validated before anything is written (`validate` of each converter).
- Every file is written atomically (temporary name + os.replace).
- A video counts as done only when its marker exists, and the marker is written last. The marker stores a
  fingerprint of the video's source annotation and the options; a rerun skips videos whose marker matches and
  redoes the others from scratch (their output folders are removed first, so nothing stale or half-written
  survives). A killed run followed by a rerun therefore gives the same bytes as one uninterrupted run.
- A video that fails (e.g. a missing frame file) is reported with the path and leaves no marker; the other videos
  go on, and the run ends with a non-zero exit code.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cutie.utils.atomic import atomic_write_json

META_DIR = "_meta"
OUTPUT_DIRS = ("JPEGImages", "Annotations", "JPEGImages_all_frames")


class InputError(ValueError):
    """The annotation file is malformed; the message names the video and frame. Nothing was written."""

    def __init__(self, problems: list[str], source: str):
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{source}: {len(problems)} problem(s), nothing was written:\n  {shown}{more}\n"
            "fix: repair or re-download the annotation file"
        )


@dataclass
class Job:
    """One output video: its name, the fingerprint of its source entry + options, and the converter payload."""

    video: str
    fingerprint: str
    payload: dict


@dataclass
class JobResult:
    video: str
    status: str  # converted | skipped | failed
    frames: int = 0
    objects: int = 0
    error: str = ""


@dataclass
class Summary:
    sequences: int = 0
    converted: int = 0
    skipped: int = 0
    failed: list[JobResult] = field(default_factory=list)
    frames: int = 0
    objects: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"sequences: {self.sequences} ({self.converted} converted, {self.skipped} already done, "
            f"{len(self.failed)} failed); frames written: {self.frames}; objects: {self.objects}; "
            f"{self.seconds:.1f}s"
        ]
        out += [f"FAILED {r.video}: {r.error}" for r in self.failed]
        return out


def fingerprint(entry: object, options: dict, version: int) -> str:
    """A stable hash of one video's source annotation and the options that shape its output."""
    text = json.dumps({"entry": entry, "options": options, "version": version}, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def marker_path(output: Path, video: str) -> Path:
    return output / META_DIR / f"{video}.json"


def is_done(output: Path, job: Job) -> bool:
    try:
        meta = json.loads(marker_path(output, job.video).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("fingerprint") == job.fingerprint


def clear_video(output: Path, video: str) -> None:
    """Remove whatever an earlier, unfinished attempt left for this video."""
    marker_path(output, video).unlink(missing_ok=True)
    for d in OUTPUT_DIRS:
        shutil.rmtree(output / d / video, ignore_errors=True)


def write_marker(output: Path, job: Job, info: dict) -> None:
    atomic_write_json(marker_path(output, job.video), {"fingerprint": job.fingerprint, **info}, indent=1)


# A worker converts one video and returns (frames written, objects, info for the marker); it raises on failure.
Worker = Callable[[Path, Job], tuple[int, int, dict]]


def _run_one(args: tuple[Worker, Path, Job]) -> JobResult:
    worker, output, job = args
    try:
        clear_video(output, job.video)
        frames, objects, info = worker(output, job)
        write_marker(output, job, info)  # last: the video is complete only now
        return JobResult(job.video, "converted", frames, objects)
    except Exception as e:  # noqa: BLE001 - one bad video must not stop the others; reported below
        return JobResult(job.video, "failed", error=f"{type(e).__name__}: {e}")


def run_jobs(
    jobs: Sequence[Job], worker: Worker, output: Path, workers: int | None = None, desc: str = "convert"
) -> Summary:
    """Convert every job not already done, `workers` processes in parallel (default: all cores)."""
    start = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    (output / META_DIR).mkdir(exist_ok=True)
    for tmp in (output / META_DIR).glob(".*.tmp"):  # markers a kill interrupted
        tmp.unlink()
    summary = Summary(sequences=len(jobs))
    todo = []
    for job in jobs:
        if is_done(output, job):
            summary.skipped += 1
        else:
            todo.append(job)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    tasks = [(worker, output, job) for job in todo]
    pool = None
    if workers > 1:
        # fork where available: no re-import per worker, and no threads exist yet (tqdm's monitor starts below).
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers)
        results = pool.imap_unordered(_run_one, tasks, chunksize=1)
    else:
        results = map(_run_one, tasks)
    try:
        with tqdm(total=len(todo), desc=desc, unit="seq", file=sys.stderr, dynamic_ncols=True) as bar:
            for r in results:
                if r.status == "failed":
                    summary.failed.append(r)
                    bar.write(f"FAILED {r.video}: {r.error}")
                else:
                    summary.converted += 1
                    summary.frames += r.frames
                    summary.objects += r.objects
                bar.update(1)
    except BaseException:
        if pool is not None:
            pool.terminate()  # interrupted: unfinished videos have no marker and are redone next time
        raise
    if pool is not None:
        pool.close()
        pool.join()
    summary.failed.sort(key=lambda r: r.video)
    summary.seconds = time.perf_counter() - start
    return summary


def run_cli(json_path: Path, frames_path: Path, convert: Callable[[object], Summary]) -> int:
    """The command-line flow shared by the converters: read the JSON, check the frames folder, convert, print the
    summary. Exit code 0 when every video converted, 1 when some failed, 2 for bad input (nothing written)."""
    try:
        doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"error: cannot read {json_path}: {e}", file=sys.stderr)
        return 2
    if not Path(frames_path).is_dir():
        print(f"error: --frames_path {frames_path} is not a folder", file=sys.stderr)
        return 2
    try:
        summary = convert(doc)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0

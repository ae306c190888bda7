"""The conversion runner shared by the BURST, OVIS and SA-V converters: resumable, parallel, per-video failures.

Output layout (DAVIS / YouTube-VOS style, what the training loader reads):

    <output>/JPEGImages/<video>/<frame>.jpg      source frames, copied byte for byte (SA-V: decoded from the mp4)
    <output>/Annotations/<video>/<frame>.png     palette PNG (DAVIS palette), pixel value = object id, 0 = none
    <output>/_meta/<video>.json                  completion marker + id map (the loader never looks here)

Guarantees:
- The whole annotation file is validated before anything is written (`validate` of each converter): every value
  has the expected type, and every frame path stays inside --frames_path (relative, no `..`, no symlink leading
  out). A problem is reported with its JSON location (e.g. `videos[3].file_names[2]`) and exit code 2. A key
  repeated within one JSON object is such a problem too (`sequences[2].segmentations[5]: duplicate key '3'`,
  cutie/utils/strict_json.py): a plain JSON reader keeps the last value without a word.
- Confinement of the output: video names are single path components; before anything is written, the output
  folders a run would write into or delete are checked for symlinks (a planted link is refused, exit code 2), and
  every write and every deletion is checked again when it happens. Nothing outside --output_path is touched.
- A video's old output is replaced only by a complete new one: its inputs are checked first, then it is written
  into `<output>/.staging/<video>/`, and only when that succeeded is its old output (marker first) deleted and
  the new folders moved into place (a rename each). A video that fails, at its input check or half-way (e.g. a
  damaged mp4), keeps its earlier output and marker byte for byte; its staging folder is removed (a killed
  run's is removed at the next start).
- Every file is written atomically (temporary name + os.replace).
- A video counts as done only when its marker exists, and the marker is written last. The marker stores a
  fingerprint of the video's source annotation and the options; a rerun skips videos whose marker matches and
  redoes the others from scratch (their output is replaced as a whole, so nothing stale or half-written
  survives). A killed run followed by a rerun therefore gives the same bytes as one uninterrupted run.
- A video that fails (e.g. a missing frame file) is reported with the path and gets no marker of this run (one
  of an earlier conversion stays with its output, and does not match: the next run tries the video again); the
  other videos go on, and the run ends with a non-zero exit code.
- Videos already in the output (with a marker) that this source does not hold, e.g. removed from the annotation
  file or converted from another split into the same folder, are left as they are, but the run's summary ends
  with a warning naming how many and the first few: training would read them as part of the dataset.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cutie.data.index.records import META_DIR, marker_path, read_marker
from cutie.utils import strict_json
from cutie.utils.atomic import (
    atomic_copy,
    atomic_move_folder,
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temps,
)
from cutie.utils.image_files import FileError, check_frame
from cutie.utils.paths import Confiner, PathEscapeError, check_no_symlink_inside, is_inside, symlinks_below

OUTPUT_DIRS = ("JPEGImages", "Annotations", "JPEGImages_all_frames")
# <output>/.staging/<video>/ (laid out as the output) holds a video while it is written; hidden, so no loader or
# data check reads it, and a video name (never starting with '.') cannot collide with it
STAGING = ".staging"


FIX_JSON = "fix: repair or re-download the annotation file"
FIX_EMPTY = "fix: point --json_path at the annotation file of the split to convert (the README names it)"
FIX_PATHS = (
    "fix: frame paths must be relative to --frames_path, without '..', and not lead out of it through a symlink "
    "(check --frames_path, or copy the frames into it instead of linking them)"
)
FIX_OUTPUT = "fix: remove the symlink(s) from the output folder, or choose another --output_path, and rerun"


class ForkSafeBar(tqdm):
    """A progress bar without tqdm's monitor thread, for work before a process pool forks: a fork must not happen
    while another thread runs (tqdm's monitor outlives its bars)."""

    monitor_interval = 0


class InputError(ValueError):
    """The annotation file (or the output folder) is unusable; each problem names its JSON location or path.
    Nothing was written."""

    def __init__(self, problems: list[str], source: str, fixes: Sequence[str] = (FIX_JSON,)):
        self.problems = problems
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{source}: {len(problems)} problem(s), nothing was written:\n  {shown}{more}\n" + "\n".join(fixes)
        )


class Problems(list[str]):
    """Problems of one document, collected by the validators; path problems get their own fix line."""

    def __init__(self) -> None:
        super().__init__()
        self.paths = False

    def path(self, message: str) -> None:
        self.paths = True
        self.append(message)

    def raise_if_any(self, source: str) -> None:
        if self:
            raise InputError(list(self), source, ((FIX_PATHS,) if self.paths else ()) + (FIX_JSON,))


_INT_RE = re.compile(r"[0-9]+")


def is_int(value: object) -> bool:
    """A JSON integer (bool is an int subclass in Python, but `true` is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def show(value: object) -> str:
    """A JSON value as the user wrote it, cut short: for messages."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_digits(value: object) -> bool:
    """A string of ASCII digits (str.isdigit also accepts '²', which int() refuses)."""
    return isinstance(value, str) and _INT_RE.fullmatch(value) is not None


def component_problem(name: object) -> str | None:
    """Why `name` cannot be one folder/file name of the output, or None if it can."""
    if not isinstance(name, str):
        return f"must be a string, got {show(name)}"
    if not name or name in (".", ".."):
        return f"{name!r} is not a usable name"
    if "/" in name or "\\" in name or "\x00" in name:
        return f"{name!r} must be a single folder name (no '/', '\\' or NUL)"
    if name.startswith("."):
        return f"{name!r} starts with '.' (hidden and temporary names are reserved)"
    return None


def check_frame_path(frames_root: Confiner, relative: object, where: str, problems: Problems) -> bool:
    """Checks a frame path from the JSON: a non-empty string, relative, no `..`, no symlink out of `frames_root`.
    Records the problem (starting with `where`, the JSON location) and returns False if it is refused."""
    if not isinstance(relative, str) or not relative:
        problems.append(f"{where}: must be a non-empty string (a frame path), got {show(relative)}")
        return False
    try:
        frames_root(relative, what=f"{where}:")
    except PathEscapeError as e:
        problems.path(str(e))
        return False
    return True


def check_folders(frames_path: Path, output_path: Path) -> None:
    """Refuses an output folder that holds the frames or lies among them: clearing a video there could delete
    the sources."""
    if is_inside(output_path, frames_path) or is_inside(frames_path, output_path):
        raise InputError(
            [f"--output_path {output_path} and --frames_path {frames_path} overlap"],
            "folders",
            ("fix: write the output to a folder beside the frames, not inside them (or around them)",),
        )
    if output_path.exists() and not output_path.is_dir():
        raise InputError(
            [f"--output_path {output_path} exists and is not a folder"], "folders", ("fix: choose a folder",)
        )


def assign_pixel_ids(wanted: Sequence[int], reserved: Iterable[int] = ()) -> list[int]:
    """PNG pixel values for objects that want the ids `wanted` (in order): an id 1..255 is kept the first time it
    is wanted; larger ids (a PNG pixel holds 0..255) and repeats get the smallest values that neither a kept id
    nor `reserved` uses, in order. Raises ValueError when more than 255 objects need a value."""
    kept: set[int] = set()
    keep = []
    for w in wanted:
        keep.append(1 <= w <= 255 and w not in kept)
        if keep[-1]:
            kept.add(w)
    used = kept | {r for r in reserved if 1 <= r <= 255}
    free = iter(i for i in range(1, 256) if i not in used)
    out = []
    for w, k in zip(wanted, keep, strict=True):
        value = w if k else next(free, None)
        if value is None:
            raise ValueError(f"more than 255 objects ({len(wanted)}); a PNG mask cannot hold them")
        out.append(value)
    return out


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
    notes: list[str] = field(default_factory=list)  # what the converter left out, counted
    warnings: list[str] = field(default_factory=list)  # printed last, where they are seen

    def lines(self) -> list[str]:
        out = [
            f"sequences: {self.sequences} ({self.converted} converted, {self.skipped} already done, "
            f"{len(self.failed)} failed); frames written: {self.frames}; objects: {self.objects}; "
            f"{self.seconds:.1f}s"
        ]
        out += [f"note: {n}" for n in self.notes]
        out += [f"FAILED {r.video}: {r.error}" for r in self.failed]
        out += [f"warning: {w}" for w in self.warnings]
        return out


def fingerprint(entry: object, options: dict, version: int) -> str:
    """A stable hash of one video's source annotation and the options that shape its output."""
    text = json.dumps({"entry": entry, "options": options, "version": version}, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def is_done(output: Path, job: Job) -> bool:
    meta = read_marker(marker_path(output, job.video))
    return meta is not None and meta["fingerprint"] == job.fingerprint


def video_paths(output: Path, video: str) -> list[Path]:
    """Every path of the output that belongs to `video`: its marker and its folders."""
    return [marker_path(output, video)] + [output / d / video for d in OUTPUT_DIRS]


def check_source_frame(path: Path, size: tuple[int, int]) -> None:
    """A frame a conversion will copy, checked as training will check it (cutie/utils/image_files.py) and
    against the JSON's (height, width) its masks are drawn at; raises naming the source file, so a damaged frame
    fails its video here instead of being copied and reported under the output at training time."""
    if not path.is_file():
        what = " (it is a folder)" if path.is_dir() else " as a regular file" if path.exists() else ""
        raise FileNotFoundError(f"frame file {path} does not exist{what}")
    result = check_frame(path)
    if isinstance(result, FileError):
        raise ValueError(f"frame file {path}: {result.detail} (fix: re-download or re-extract it)")
    if (result.height, result.width) != tuple(size):
        raise ValueError(
            f"frame file {path} is {result.width}x{result.height} but the JSON gives {size[1]}x{size[0]} (W x H) "
            "(fix: use the frames the annotation file was made for)"
        )


def check_output(output: Path, videos: Sequence[str]) -> None:
    """Before anything is written: refuse symlinks where this run would write or delete (the output's own folders,
    each video's folders, what they hold, and markers). Raises InputError listing every link found."""
    links = []
    tops = [output / d for d in (META_DIR, STAGING, *OUTPUT_DIRS)]
    for p in tops + [p for v in videos for p in video_paths(output, v)]:
        if p.is_symlink():
            links.append(p)
        elif p.is_dir() and p.parent != output:
            links += symlinks_below(p)
    if links:
        problems = [f"{p} is a symlink (to {os.readlink(p)}); refusing to write or delete through it" for p in links]
        raise InputError(problems, f"--output_path {output}", (FIX_OUTPUT,))


def stale_videos(output: Path, videos: Iterable[str]) -> list[str]:
    """The converted videos of `output` (those with a marker) that are not among `videos`, sorted."""
    meta, wanted = output / META_DIR, set(videos)
    if not meta.is_dir():
        return []
    names = (p.name[: -len(".json")] for p in meta.iterdir() if p.name.endswith(".json") and p.is_file())
    return sorted(v for v in names if not v.startswith(".") and v not in wanted)


def stale_warning(output: Path, stale: Sequence[str], shown: int = 3) -> str:
    """One line for videos left in the output by another source: the loader reads them as part of the dataset.
    They are named, not deleted: removing a user's earlier output unasked would be the worse surprise."""
    named = ", ".join(stale[:shown]) + (", ..." if len(stale) > shown else "")
    return (
        f"{len(stale)} converted video(s) in {output} are not in this source ({named}) and were left as they were; "
        "training reads them as part of the dataset (fix: remove their JPEGImages/, Annotations/ and _meta/ "
        "entries, or convert into a fresh --output_path)"
    )


def clear_video(output: Path, video: str) -> None:
    """Remove the video's output, marker first (never through a symlink)."""
    for p in video_paths(output, video):
        check_no_symlink_inside(output, p)
        if p.is_dir():
            shutil.rmtree(p)  # rmtree itself never follows links found inside the folder
        else:
            p.unlink(missing_ok=True)


def clear_staging(output: Path, video: str | None = None) -> None:
    """Remove the staging folder of `video` (None: all of them, left by a killed run), never through a symlink."""
    path = output / STAGING if video is None else output / STAGING / video
    check_no_symlink_inside(output, path)
    if path.is_dir():
        shutil.rmtree(path)


def publish(output: Path, video: str) -> None:
    """Move the video's folders from its finished staging folder into place (its old output was cleared)."""
    stage = output / STAGING / video
    for d in OUTPUT_DIRS:
        if (stage / d / video).is_dir():
            check_no_symlink_inside(output, output / d / video)
            atomic_move_folder(stage / d / video, output / d / video)
    clear_staging(output, video)


def write_output(output: Path, path: Path, data: bytes) -> None:
    """Atomically write `data` to `path`, which must lie inside `output` with no symlink on the way."""
    check_no_symlink_inside(output, path)
    atomic_write_bytes(path, data)


def copy_output(output: Path, path: Path, src: Path) -> None:
    """Atomically copy the (already confined) source file `src` to `path` inside `output`."""
    check_no_symlink_inside(output, path)
    atomic_copy(src, path)


def write_marker(output: Path, job: Job, info: dict) -> None:
    path = marker_path(output, job.video)
    check_no_symlink_inside(output, path)
    atomic_write_json(path, {"fingerprint": job.fingerprint, **info}, indent=1)


# A check looks at one video's inputs (its frame files) and raises, naming the file, if one is unusable, before
# anything is written. A worker then converts the video into the folder it is given (the video's staging folder,
# laid out as the output) and returns (frames written, objects, info for the marker); it raises on failure.
Check = Callable[[Job], None]
Worker = Callable[[Path, Job], tuple[int, int, dict]]


def _run_one(args: tuple[Check, Worker, Path, Job]) -> JobResult:
    check, worker, output, job = args
    try:
        check(job)  # first: a video whose inputs are unusable keeps whatever output it had
        clear_staging(output, job.video)
        # into the staging folder: a video that fails half-way (e.g. a damaged mp4) keeps its earlier output
        frames, objects, info = worker(output / STAGING / job.video, job)
        clear_video(output, job.video)  # the old marker goes first: a kill from here on leaves the video undone
        publish(output, job.video)
        write_marker(output, job, info)  # last: the video is complete only now
        return JobResult(job.video, "converted", frames, objects)
    except Exception as e:  # noqa: BLE001 - one bad video must not stop the others; reported below
        try:
            clear_staging(output, job.video)
        except (OSError, PathEscapeError):  # e.g. a link planted there: removed (or refused) at the next start
            pass
        return JobResult(job.video, "failed", error=f"{type(e).__name__}: {e}")


def _worker_init() -> None:
    """Ctrl-C reaches the whole process group: the main process alone handles it (terminating the pool), so the
    user sees one line instead of a traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


INTERRUPTED = (
    "interrupted: the videos finished so far are kept; rerun the same command to convert the rest (finished "
    "videos are skipped, unfinished ones redone)"
)


def run_jobs(
    jobs: Sequence[Job],
    check: Check,
    worker: Worker,
    output: Path,
    workers: int | None = None,
    desc: str = "convert",
) -> Summary:
    """Convert every job not already done, `workers` processes in parallel (default: all cores)."""
    start = time.perf_counter()
    for job in jobs:  # the validators check names; this guards callers that build jobs themselves
        if (why := component_problem(job.video)) is not None:
            raise InputError([f"video name: {why}"], "jobs")
    check_output(output, [job.video for job in jobs])
    output.mkdir(parents=True, exist_ok=True)
    (output / META_DIR).mkdir(exist_ok=True)
    remove_stale_temps(output / META_DIR)  # markers a kill interrupted
    clear_staging(output)  # videos a kill interrupted while they were written
    summary = Summary(sequences=len(jobs))
    if stale := stale_videos(output, (job.video for job in jobs)):
        summary.warnings.append(stale_warning(output, stale))
    todo = []
    for job in jobs:
        if is_done(output, job):
            summary.skipped += 1
        else:
            todo.append(job)
    workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
    tasks = [(check, worker, output, job) for job in todo]
    pool = None
    if workers > 1:
        # fork where available: no re-import per worker, and no threads exist yet (tqdm's monitor starts below).
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, initializer=_worker_init)
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
    if (output / STAGING).is_dir():
        (output / STAGING).rmdir()  # empty: every video moved its folders out or removed them
    summary.failed.sort(key=lambda r: r.video)
    summary.seconds = time.perf_counter() - start
    return summary


def run_cli(json_path: Path, frames_path: Path, convert: Callable[[object], Summary]) -> int:
    """The command-line flow shared by the converters: read the JSON, check the frames folder, convert, print the
    summary. Exit code 0 when every video converted, 1 when some failed (or the run could not go on, e.g. a full
    disk), 2 for bad input or an unsafe output folder (nothing written)."""
    try:
        doc = strict_json.loads(Path(json_path).read_text(encoding="utf-8"))
    except KeyboardInterrupt:  # BURST's train.json takes a while to read
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except strict_json.DuplicateKeyError as e:  # json.loads would have kept the last value without a word
        print(f"error: {InputError(e.problems, str(json_path))}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        # a missing/unreadable file is a wrong --json_path; anything else is a damaged (e.g. truncated) download
        fix = "fix: check --json_path" if isinstance(e, OSError) else FIX_JSON
        print(f"error: cannot read {json_path}: {e} ({fix})", file=sys.stderr)
        return 2
    if not Path(frames_path).is_dir():
        print(f"error: --frames_path {frames_path} is not a folder", file=sys.stderr)
        return 2
    try:
        summary = convert(doc)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the output folder cannot be created, or the disk filled up
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0

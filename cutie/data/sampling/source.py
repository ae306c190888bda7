"""RecipeSource: the picklable, stateless-per-sample map `global index -> ClipRecipe` that every backend calls.

It owns the sampling policy shared by the backends: which seed entry a global index uses (a per-epoch shuffle of
the multiplied list), the max-skip curriculum (from the sample's own iteration, so a resumed run draws the same
samples; an explicit override is shared with live worker processes through a tiny memory-mapped file), and the
replacement of samples whose files are corrupt (deterministic: the next attempt of the same index).
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import struct
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

from cutie.data.sampling.masks import BadSampleError
from cutie.data.sampling.recipe import ClipRecipe
from cutie.data.sampling.rng import EpochPermutation, sample_rng
from cutie.data.sampling.static import StaticClipSampler
from cutie.data.sampling.video import VideoClipSampler

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20  # consecutive failed draws of one index before the run stops
_NONE = -1
SHM_DIR = "/dev/shm"
# cutie_<creator pid>_<pid namespace>_shared_<random>: the creator is known, so a later start can remove the
# segments of processes that died (SIGKILL skips every cleanup) and never those of a live one.
_SEGMENT = re.compile(r"^cutie_(\d+)_(\d+)_shared_")


def _pid_namespace() -> int:
    """This process's PID namespace (containers sharing /dev/shm, e.g. `ipc: host`, have their own PIDs)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def remove_dead_segments(folder: str = SHM_DIR) -> list[Path]:
    """Removes shared-memory files of this project whose creating process is gone; returns them. Segments of
    live processes, of another PID namespace (their PIDs mean nothing here) and of unknown names are kept."""
    root = Path(folder)
    if not root.is_dir():
        return []
    ns = _pid_namespace()
    removed = []
    for p in root.iterdir():
        m = _SEGMENT.match(p.name)
        if m is None or int(m.group(2)) != ns or _alive(int(m.group(1))) or not p.is_file() or p.is_symlink():
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


class SharedInt:
    """An optional int visible to every process that holds (a pickled copy of) this object, whatever the start
    method (fork, spawn, DALI's workers): 8 bytes in a memory-mapped file. The creator removes it in close()."""

    def __init__(self, value: int | None = None) -> None:
        shm = SHM_DIR if os.path.isdir(SHM_DIR) else None
        fd, self.path = tempfile.mkstemp(prefix=f"cutie_{os.getpid()}_{_pid_namespace()}_shared_", dir=shm)
        os.write(fd, struct.pack("<q", _NONE if value is None else value))
        os.close(fd)
        self._owner = True
        self._map: mmap.mmap | None = None
        weakref.finalize(self, _unlink_if_creator, self.path, os.getpid())

    def _mapped(self) -> mmap.mmap | None:
        if self._map is None:
            try:
                with open(self.path, "r+b") as f:
                    self._map = mmap.mmap(f.fileno(), 8)
            except OSError:
                return None  # closed by its owner: behave as unset
        return self._map

    def get(self) -> int | None:
        m = self._mapped()
        if m is None:
            return None
        v = struct.unpack_from("<q", m, 0)[0]
        return None if v == _NONE else v

    def set(self, value: int | None) -> None:
        m = self._mapped()
        if m is not None:
            struct.pack_into("<q", m, 0, _NONE if value is None else int(value))

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._owner and os.path.exists(self.path):
            os.unlink(self.path)

    def __getstate__(self) -> dict:
        return {"path": self.path, "_owner": False, "_map": None}


def _unlink_if_creator(path: str, pid: int) -> None:
    if os.getpid() == pid and os.path.exists(path):
        os.unlink(path)


def max_skip_at(iteration: int, schedule: Sequence[int], fractions: Sequence[float], total_iterations: int) -> int:
    """The official curriculum: value k from iteration round(total * fractions[k]) on."""
    if len(schedule) != len(fractions) or not schedule:
        raise ValueError(f"max_skip_schedule {list(schedule)} and its fractions {list(fractions)} must pair up")
    value = schedule[0]
    for v, f in zip(schedule, fractions, strict=True):
        if iteration >= round(total_iterations * f):
            value = v
    return int(value)


class RecipeSource:
    """`source(global_index) -> ClipRecipe` for one stage; picklable (send it to workers once)."""

    def __init__(
        self,
        sampler: VideoClipSampler | StaticClipSampler,
        *,
        seed: int,
        stream: int,
        global_batch: int,
        total_iterations: int,
        max_skip_schedule: Sequence[int] = (),
        max_skip_fractions: Sequence[float] = (),
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.sampler = sampler
        self.seed, self.stream = int(seed), int(stream)
        self.global_batch = int(global_batch)
        self.total_iterations = int(total_iterations)
        self.schedule = [int(v) for v in max_skip_schedule]
        self.fractions = [float(f) for f in max_skip_fractions]
        self.max_attempts = max_attempts
        self.order = EpochPermutation(self.seed, self.stream, len(sampler))
        self.override = SharedInt() if isinstance(sampler, VideoClipSampler) else None

    # ---- curriculum
    def max_skip_for(self, iteration: int) -> int | None:
        """The scheduled max skip of an iteration (None for pre-training)."""
        if not self.schedule:
            return None
        return max_skip_at(iteration, self.schedule, self.fractions, self.total_iterations)

    def set_max_skip(self, value: int | None) -> None:
        """Override the schedule for every later sample in every process (None: follow the schedule again)."""
        if self.override is None:
            raise ValueError("max skip only applies to main-training (video) clips")
        self.override.set(value)

    def skip_for_index(self, index: int) -> int | None:
        if self.override is not None:
            forced = self.override.get()
            if forced is not None:
                return forced
        return self.max_skip_for(index // self.global_batch)

    # ---- sampling
    def __len__(self) -> int:
        return len(self.sampler)

    def __call__(self, index: int, attempt: int = 0) -> ClipRecipe:
        """The recipe of a global sample index. Files that fail are skipped: the draw is repeated as attempt+1,
        +2, ... (deterministic) and the failures are listed in recipe.info['bad_paths']."""
        bad: list[str] = []
        skip = self.skip_for_index(index)
        for a in range(attempt, attempt + self.max_attempts):
            rng = sample_rng(self.seed, self.stream, index, a)
            seed_entry = self.order(index) if a == 0 else int(rng.integers(len(self.sampler)))
            try:
                recipe = self.sampler.sample(rng, seed_entry, skip)
            except BadSampleError as e:
                log.warning("skipping a sample: %s", e)
                bad.append(e.path)
                continue
            recipe.info = {**(recipe.info or {}), "index": index, "attempt": a, "bad_paths": bad, "max_skip": skip}
            return recipe
        raise RuntimeError(
            f"sample {index}: {self.max_attempts} draws in a row hit unreadable files (last: {bad[-3:]}); the data "
            f"is badly damaged (fix: run scripts/check_data.py and re-download)"
        )

    def close(self) -> None:
        if self.override is not None:
            self.override.close()

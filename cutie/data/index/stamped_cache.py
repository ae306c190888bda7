"""The one cache of per-file results of the start-up data checks, keyed on (path, size, mtime_ns).

Used by the frame check (cutie/data/index/frame_check.py: an image's header facts) and by SA-1B
(cutie/data/index/sa1b.py: an annotation file's kept masks); what a cached value is belongs to the caller, given as
a parser and an encoder. One cache is one JSON file under `cache_root/data_check/`:
`{"version": V, "key": K, "files": {path: [size, mtime_ns, *payload]}}`.

- The file is untrusted input: an unreadable file, invalid JSON, another version or key, or no file table makes
  the whole cache ignored with a note; a malformed entry is dropped (counted in a note) and its file redone.
- `split` stats every file once: an unchanged (size, mtime_ns) takes the cached value, anything else is to do.
- Saves are atomic (cutie/utils/atomic.py) and hold only what the caller keeps (its good results), so a bad file
  is never cached and is re-read (and re-reported) every time. `Keeper` saves while a check runs and when it ends
  early (a stop signal, Ctrl-C), so a stopped or killed check resumes where it was. A save that fails is a note,
  not an error: a read-only cache folder costs speed, not correctness. A symlink at the cache file or its
  `data_check/` folder is never written through (also a note); `cache_root` itself may be a link.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from cutie.utils import strict_json
from cutie.utils.atomic import atomic_write_json
from cutie.utils.paths import PathEscapeError, check_no_symlink_inside

T = TypeVar("T")  # a cached value
K = TypeVar("K", bound=tuple)  # a caller's task: (path, whatever else the check of that file needs)
Stamp = tuple[int, int]  # (st_size, st_mtime_ns)
FOLDER = "data_check"


def cache_path(cache_root: str | os.PathLike, prefix: str, key: str) -> Path:
    """The cache file of `key` (e.g. a dataset's folders), named `<prefix><hash of key>.json`."""
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    return Path(cache_root) / FOLDER / f"{prefix}{digest}.json"


def is_count(x: object) -> bool:
    """A JSON integer >= 0 (JSON true/false are not numbers here)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


@dataclass(frozen=True)
class StampedCache(Generic[T]):
    """One cache file; `parse` turns an untrusted payload (the entry after size and mtime_ns) into a value or
    None when malformed, `encode` turns a value back into a JSON list."""

    path: Path
    key: str
    version: int
    parse: Callable[[list], T | None]
    encode: Callable[[T], list]

    def _ignored(self, why: str) -> tuple[dict[str, tuple[Stamp, T]], str]:
        return {}, f"cache file {self.path} {why}; ignored, every file is checked again"

    def load(self) -> tuple[dict[str, tuple[Stamp, T]], str | None]:
        """(entries {file path: ((size, mtime_ns), value)}, a note when the cache or some entries were unusable)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}, None
        except (OSError, UnicodeDecodeError) as e:
            return self._ignored(f"is unreadable ({e})")
        try:
            doc = strict_json.loads(text)  # a repeated key: not a file this code wrote
        except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
            return self._ignored(f"is not valid JSON ({e})")
        if not (isinstance(doc, dict) and doc.get("version") == self.version and doc.get("key") == self.key):
            return self._ignored("is of another version or dataset")
        files = doc.get("files")
        if not isinstance(files, dict):
            return self._ignored("has no file table")
        entries, bad = {}, 0
        for name, value in files.items():
            parsed = self._entry(value)
            if parsed is None:
                bad += 1
            else:
                entries[name] = parsed
        note = f"cache file {self.path}: {bad} malformed entries ignored (those files are checked again)"
        return entries, note if bad else None

    def _entry(self, value: object) -> tuple[Stamp, T] | None:
        if not (isinstance(value, list) and len(value) >= 2 and is_count(value[0]) and is_count(value[1])):
            return None
        parsed = self.parse(value[2:])
        return None if parsed is None else ((value[0], value[1]), parsed)

    def save(self, entries: Mapping[str, tuple[Stamp, T]]) -> str | None:
        """Write `entries` atomically (sorted by path); a note when that fails (the next check redoes every file)."""
        files = {p: [size, mtime, *self.encode(v)] for p, ((size, mtime), v) in sorted(entries.items())}
        try:
            check_no_symlink_inside(self.path.parent.parent, self.path)  # cache_root/data_check/ must be ours
            atomic_write_json(self.path, {"version": self.version, "key": self.key, "files": files})
        except (OSError, PathEscapeError) as e:
            return f"could not write the check cache {self.path} ({e}); the next check reads every file"
        return None


@dataclass
class Split(Generic[K, T]):
    """The tasks of a check divided by the cache."""

    hits: dict[str, tuple[Stamp, T]] = field(default_factory=dict)  # unchanged files the cache answers
    todo: list[K] = field(default_factory=list)  # tasks of new or changed files (or not answered by the cache)
    stamps: dict[str, Stamp] = field(default_factory=dict)  # every file that could be stat'ed
    unreadable: dict[str, OSError] = field(default_factory=dict)  # files that could not be stat'ed

    def entry(self, path: str, value: T) -> tuple[Stamp, T]:
        """A freshly checked value as a cache entry, stamped as the file was before it was read."""
        return self.stamps[path], value


def split(
    tasks: Iterable[K],
    cached: Mapping[str, tuple[Stamp, T]],
    answers: Callable[[K, T], bool] | None = None,
) -> Split[K, T]:
    """One stat per task's file (`task[0]`): a cached value whose (size, mtime_ns) still match, and which
    `answers(task, value)` accepts (default: any), is a hit; every other task is to do. What is not a regular
    file (a folder, a FIFO, a device) is unreadable without being opened."""
    out: Split[K, T] = Split()
    for task in tasks:
        path = task[0]
        try:
            st = os.stat(path)
        except OSError as e:
            out.unreadable[path] = e
            continue
        if stat.S_ISDIR(st.st_mode):
            out.unreadable[path] = IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            continue
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the check forever, a device never end
            out.unreadable[path] = OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)")
            continue
        out.stamps[path] = stamp = (st.st_size, st.st_mtime_ns)
        hit = cached.get(path)
        if hit is not None and hit[0] == stamp and (answers is None or answers(task, hit[1])):
            out.hits[path] = hit
        else:
            out.todo.append(task)
    return out


class Keeper(Generic[T]):
    """The entries a check keeps, saved to its cache as they come: now and then while the check runs (every
    SAVE_EVERY_S, stretched so that saving takes at most MAX_SAVE_SHARE of the time) and once at the end, also when
    the check ends early (a stop signal, an error, Ctrl-C). A relaunch after a stop or a kill then redoes only the
    files not yet saved, instead of the whole check (hours on a large release)."""

    SAVE_EVERY_S = 60.0
    MAX_SAVE_SHARE = 0.05  # of the check's time spent saving (a save of millions of entries takes seconds)

    def __init__(self, cache: StampedCache[T] | None, entries: Mapping[str, tuple[Stamp, T]], dirty: bool) -> None:
        self.cache, self.entries, self.dirty = cache, dict(entries), dirty
        self.notes: list[str] = []
        self._next_save = time.monotonic() + self.SAVE_EVERY_S

    def add(self, path: str, entry: tuple[Stamp, T]) -> None:
        self.entries[path] = entry
        self.dirty = True
        if self.cache is not None and time.monotonic() >= self._next_save:
            self._save()

    def _save(self) -> None:
        t0 = time.monotonic()
        note = self.cache.save(self.entries) if self.cache is not None else None
        self.dirty = False
        if note and note not in self.notes:
            self.notes.append(note)
        took = time.monotonic() - t0
        self._next_save = time.monotonic() + max(self.SAVE_EVERY_S, took / self.MAX_SAVE_SHARE)

    def __enter__(self) -> Keeper[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cache is not None and self.dirty:
            self._save()

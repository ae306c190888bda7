"""The one atomic writer: every file this project writes goes through `atomic_write`.

A file is written to a temporary sibling (`.<name>.<random>.cutie-tmp`, same folder so the rename cannot cross
file systems), flushed and fsynced, renamed over the final name, and the folder is fsynced so the rename itself
survives a power cut. A kill at any moment leaves the previous file or the complete new one, never half a file.

- Mode: mkstemp creates 0600 files; the final file gets 0666 minus the process umask (0644 under 022), like any
  ordinary `open()`, so a group sharing a dataset or a run folder can read it.
- Symlinks: the final name is never written through. A symlink already sitting at the destination is refused
  (`UnsafePathError`); `os.replace` would otherwise swap the link itself, hiding that something planted it.
- Full disk: ENOSPC / EDQUOT (and EFBIG: a file-size limit such as `ulimit -f`) become `DiskFullError` with one
  line (what, where, how much is free); the temporary file is removed and the previous file stays untouched.
- Digests: `atomic_torch_save` returns the sha256 of the bytes it wrote (hashed on the way out, no second read).
- Folders: `atomic_move_folder` puts a folder written elsewhere (e.g. a converter's staging folder) in place in
  one rename.
- Stale parts: temporaries left by a SIGKILL are found and removed by `remove_stale_temps(folder)` at the next
  start; only names with this module's suffix are ever touched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".cutie-tmp"
_umask_lock = threading.Lock()


class UnsafePathError(OSError):
    """A write that would go through a symlink or outside the folder it belongs to."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the sentence alone, without "[Errno 1]"


class DiskFullError(OSError):
    """A write that failed for lack of space; the message says where, and how much is free."""


def current_umask() -> int:
    # os.umask is the only portable reader and it sets as it reads: do both under a lock.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def free_bytes(folder: str | os.PathLike) -> int:
    """Free space for an unprivileged writer in `folder` (or its nearest existing parent)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Raises DiskFullError before a write of about `needed` bytes that cannot fit."""
    free = free_bytes(folder)
    if needed > free:
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough disk space for {what} in {folder}: needs about {_human(needed)}, {_human(free)} free "
            "(free some space or point the output elsewhere)",
        )


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some file systems do not open folders; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], Any],
    *,
    mode: int | None = None,
    before_replace: Callable[[], Any] | None = None,
) -> None:
    """Calls `write(file)` on a temporary sibling of `path`, then moves it into place atomically.

    `mode` defaults to 0666 & ~umask. Parent folders are created. `before_replace` runs once the new content is
    on disk, just before it takes the final name (e.g. to write a digest first, so that a file under its final
    name always has one). Raises UnsafePathError if `path` is a symlink, DiskFullError if the disk fills up.
    """
    path = Path(path)
    if path.is_symlink():
        raise UnsafePathError(errno.EPERM, f"refusing to write through the symlink {path}; remove it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (0o666 & ~current_umask()) if mode is None else mode)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.errno == errno.EFBIG and not isinstance(e, DiskFullError):
            raise DiskFullError(
                e.errno, f"file size limit reached while writing {path} (ulimit -f, or the file system's maximum)"
            ) from None
        if e.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(e, DiskFullError):
            raise DiskFullError(
                e.errno, f"disk full while writing {path} ({_human(free_bytes(path.parent))} free there)"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object, indent: int | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copies the bytes of `src` to `dst` atomically (the source must be a regular file)."""

    def copy(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)

    atomic_write(dst, copy)


def atomic_move_folder(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves the finished folder `src` to the free name `dst` in one rename (both in one file system), so `dst`
    is either absent or complete; the folder holding `dst` is fsynced so the move survives a power cut. Refuses
    a symlink at `dst`; an existing non-empty `dst` fails (the rename does not merge)."""
    dst = Path(dst)
    if dst.is_symlink():
        raise UnsafePathError(errno.EPERM, f"refusing to move a folder onto the symlink {dst}; remove it first")
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)
    _fsync_dir(dst.parent)


class _HashingWriter:
    """A write-only file wrapper that hashes every byte passing through (torch.save only calls write/flush).

    Writes are completed or raise: a file at its size limit accepts part of a block and fails on the rest, and
    torch's zip writer would report the short count as an opaque RuntimeError ("unexpected pos"). The OSError is
    kept so the caller can raise it instead of whatever torch makes of it.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.sha256 = hashlib.sha256()
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        done = 0
        try:
            while done < len(view):
                n = self.f.write(view[done:])
                if not n:
                    raise OSError(errno.EIO, "write made no progress")
                done += n
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(view)
        return done

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(obj: object, path: str | os.PathLike, on_digest: Callable[[str], Any] | None = None) -> str:
    """torch.save(obj) to `path` atomically; returns the sha256 (hex) of the file's bytes. `on_digest(sha256)`
    runs before the file takes its final name (see atomic_write's before_replace)."""
    import torch  # local: the data tools use this module without needing torch loaded

    digest: list[str] = []

    def write(f: IO[bytes]) -> None:
        w = _HashingWriter(f)
        try:
            torch.save(obj, w)
        except Exception:
            if w.error is not None:
                raise w.error from None  # the real cause (e.g. ENOSPC), so atomic_write can say "disk full"
            raise
        digest.append(w.sha256.hexdigest())

    atomic_write(path, write, before_replace=None if on_digest is None else lambda: on_digest(digest[0]))
    return digest[0]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Removes temporaries of this module left by a killed process (never follows symlinks); returns them.

    Call only where no other live process of this project writes into `folder` (e.g. at the start of a run,
    on the main rank, before the other ranks write).
    """
    root = Path(folder)
    if not root.is_dir() or root.is_symlink():
        return []
    removed = []
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in files:
            p = Path(here) / name
            if is_temp_name(name) and (p.is_symlink() or p.is_file()):
                p.unlink(missing_ok=True)
                removed.append(p)
        if not recursive:
            dirs.clear()
    return removed

"""The one appending writer: files a run keeps open and adds to (train.log, metrics.jsonl, TensorBoard events).

The atomic writer (cutie/utils/atomic.py) replaces whole files; a log grows for hours, so it is opened once and
written through that one descriptor. Opening is where a symlink could be followed, so every step is taken with
O_NOFOLLOW relative to the folder before it: a link at the file's name or at any folder between `root` and it is
refused (`UnsafePathError`), and so is anything that is not a regular file (a FIFO would block the run). `root`
itself may be a link (a run folder on another disk). Once open, the descriptor names the file that was opened:
a link planted at its name later is not written through, it merely hides the file from readers.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

from cutie.utils.atomic import UnsafePathError
from cutie.utils.paths import relative_parts

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for writing must fail at once (ENXIO without a reader), not wait for one.
_FILE_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _refuse(path: Path) -> UnsafePathError:
    target = f" (to {os.readlink(path)})" if path.is_symlink() else ""
    return UnsafePathError(
        errno.EPERM, f"refusing to write through {path}: it is a symlink{target} or not a plain file; remove it first"
    )


def _open_folder(parent_fd: int, name: str, shown: Path) -> int:
    try:
        os.mkdir(name, dir_fd=parent_fd)
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(shown) from None
        raise


def open_append_inside(root: str | os.PathLike, relative: str, *, exclusive: bool = False) -> BinaryIO:
    """Opens `root/relative` for appending (created 0666 & ~umask, missing folders below `root` created), never
    through a symlink below `root`. `exclusive`: the file must not exist yet (FileExistsError otherwise).
    Returns a buffered binary file: flush after each whole line or record, so a reader never sees half of one."""
    parts = relative_parts(root, relative, "run file")  # PathEscapeError: absolute, '..', empty
    shown = Path(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # root may be a link: followed on purpose
    try:
        for name in parts[:-1]:
            shown = shown / name
            inner = _open_folder(fd, name, shown)
            os.close(fd)
            fd = inner
        shown = shown / parts[-1]
        try:
            file_fd = os.open(parts[-1], _FILE_FLAGS | (os.O_EXCL if exclusive else 0), 0o666, dir_fd=fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
                raise _refuse(shown) from None
            raise
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise _refuse(shown)
    fcntl.fcntl(file_fd, fcntl.F_SETFL, fcntl.fcntl(file_fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(file_fd, "ab")

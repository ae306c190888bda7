"""Confinement of paths that come from outside (a JSON, a folder listing, a command line).

A path named by an untrusted file must stay inside the folder it claims to be in: no absolute paths, no `..`
climbing out, and no symlink inside the folder pointing out of it (symlinks are resolved before the check).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class PathEscapeError(ValueError):
    """A relative path that would leave its folder; the message names the path and the folder."""


def relative_parts(root: str | os.PathLike, relative: str, what: str) -> tuple[str, ...]:
    """The components of `relative`, refused (PathEscapeError) if it is empty, absolute or uses `..`."""
    if not isinstance(relative, str) or not relative:
        raise PathEscapeError(f"{what} {relative!r} is not a non-empty string")
    if "\x00" in relative:
        raise PathEscapeError(f"{what} {relative!r} contains a NUL byte")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        raise PathEscapeError(f"{what} {relative!r} is absolute; it must be relative to {root}")
    if ".." in pure.parts:
        raise PathEscapeError(f"{what} {relative!r} contains '..'; it must stay inside {root}")
    return pure.parts


def confined(root: str | os.PathLike, relative: str, *, what: str = "path") -> Path:
    """`root / relative`, checked to resolve inside `root` (symlinks followed). Raises PathEscapeError.

    The returned path is the unresolved join (so messages show what the user wrote) and is safe to open.
    """
    base = Path(root)
    joined = base.joinpath(*relative_parts(root, relative, what))
    if not is_inside(base, joined):
        raise PathEscapeError(f"{what} {relative!r} leads outside {root} through a symlink")
    return joined


class Confiner:
    """`confined()` for many paths under one root, as fast as the file system allows: the root is resolved once,
    then each path costs one lstat per component below the root (plus a full resolve only where a component is
    a symlink). For a data set of a million frames this is seconds instead of minutes."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.real_root = os.path.realpath(root)  # plain strings below: this runs once per frame of a data set

    def __call__(self, relative: str, *, what: str = "path") -> Path:
        parts = relative_parts(self.root, relative, what)
        here = self.real_root
        for part in parts:
            here = os.path.join(here, part)
            if os.path.islink(here):
                here = os.path.realpath(here)  # resolves nested links; `here` is then link-free
        if here != self.real_root and not here.startswith(os.path.join(self.real_root, "")):
            raise PathEscapeError(f"{what} {relative!r} leads outside {self.root} through a symlink")
        return self.root.joinpath(*parts)


def is_inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """True if `path`, with every symlink resolved, is `root` or lies below it (resolved too)."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    return real == real_root or real_root in real.parents


def check_writable_inside(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuses a write target that is a symlink, or whose folder resolves outside `root`."""
    p = Path(path)
    if p.is_symlink():
        raise PathEscapeError(f"{p} is a symlink; refusing to write through it (remove it and rerun)")
    if not is_inside(root, p.parent) or not is_inside(root, p):
        raise PathEscapeError(f"{p} resolves outside the output folder {root}; refusing to write there")


def check_no_symlink_inside(root: str | os.PathLike, path: str | os.PathLike) -> None:
    """Refuses `path` unless it lies lexically below `root` and neither it nor any folder between `root` and it is
    a symlink (missing parts are fine: they will be created as plain folders). Raises PathEscapeError.

    Stricter than `check_writable_inside`: a link planted on the way is refused even when it points back inside,
    because writing or deleting through it would touch something other than the path the caller named.
    """
    base, p = Path(root), Path(path)
    try:
        rel = p.relative_to(base)
    except ValueError:
        raise PathEscapeError(f"{p} is not inside the output folder {base}; refusing to touch it") from None
    if ".." in rel.parts:
        raise PathEscapeError(f"{p} contains '..'; refusing to touch it")
    here = base
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise PathEscapeError(
                f"{here} is a symlink (to {os.readlink(here)}); refusing to write or delete through it "
                "(remove the link and rerun)"
            )
    if not is_inside(base, p):
        raise PathEscapeError(f"{p} resolves outside the output folder {base}; refusing to touch it")


def symlinks_below(folder: str | os.PathLike) -> list[Path]:
    """Symlinks anywhere below `folder` (never followed; `folder` itself may be one). scandir's d_type makes this
    about free per entry. A missing folder has none."""
    found, todo = [], [os.fspath(folder)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if e.is_symlink():
                found.append(Path(e.path))
            elif e.is_dir(follow_symlinks=False):
                todo.append(e.path)
    return sorted(found)


def check_output_folder(root: str | os.PathLike, folder: str | os.PathLike, *, listed: int = 3) -> None:
    """Before a run writes into `folder` (`root` itself, or a folder below it that the run names): refuses a
    symlink on the way from `root` to `folder` or anywhere inside `folder`, because the run would write (or
    prune) through it. `root` itself may be a symlink: that is where the user chose to put the output.
    Raises PathEscapeError naming the links (the first `listed`) and the fix."""
    check_no_symlink_inside(root, folder)
    links = symlinks_below(folder)
    if links:
        named = ", ".join(f"{p} -> {os.readlink(p)}" for p in links[:listed])
        more = f" and {len(links) - listed} more" if len(links) > listed else ""
        raise PathEscapeError(
            f"the output folder {folder} holds {len(links)} symlink(s) ({named}{more}); refusing to write through "
            "them (fix: remove the links, or choose another output folder, and rerun)"
        )

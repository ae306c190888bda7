"""What a stage trains on, a few numbers per dataset: the checkpoint keeps them, so that a resume on data that
changed under the same paths (videos added or removed, frames re-extracted, other empty-mask lists) says so.

The loader is stateless (a sample derives from the seed and its global index), so a resume on changed data still
runs, but samples other clips than the uninterrupted run: it is not bit-for-bit that run. Names are taken
relative to each dataset's folder, so the same data under another data_root is the same data.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Sequence

import numpy as np

from cutie.data.index.datasets import StaticIndex, VideoIndex
from cutie.data.index.sa1b import Sa1bSet
from cutie.data.index.scan import StaticSet, VideoSet

_CHUNK = 65536  # names hashed per update: SA-1B folders list millions of images


def _relative(paths: Iterable[str], folder: str) -> Iterable[str]:
    """Paths below `folder` without it (a string prefix: os.path.relpath costs too much for millions)."""
    prefix = os.path.join(os.path.normpath(folder), "")
    for p in paths:
        yield p[len(prefix) :] if p.startswith(prefix) else p


def _hash_lines(h: hashlib._Hash, lines: Iterable[str]) -> None:
    it = iter(lines)
    while batch := list(itertools.islice(it, _CHUNK)):
        h.update(("\n".join(batch) + "\n").encode("utf-8", "surrogateescape"))


def _video_set(vset: VideoSet) -> dict:
    h = hashlib.sha256(b"videos\n")
    _hash_lines(
        h, (f"{v}\0{'/'.join(j)}\0{'/'.join(p)}" for v, j, p in zip(vset.videos, vset.jpgs, vset.pngs, strict=True))
    )
    for flags in vset.empty:  # which masks are known empty (empty-mask lists), per video
        h.update(b"-" if flags is None else np.asarray(flags, dtype=np.uint8).tobytes() + b"|")
    h.update(repr(vset.steps).encode())
    h.update(repr(vset.ids).encode())  # partial_labels: each mask's object ids
    frames = sum(len(j) for j in vset.jpgs)
    return {"name": vset.name, "videos": len(vset.videos), "frames": frames, "sha256": h.hexdigest()}


def _static_set(sset: StaticSet) -> dict:
    h = hashlib.sha256(b"pairs\n")
    jpgs = _relative((j for j, _ in sset.pairs), sset.directory)
    pngs = _relative((p for _, p in sset.pairs), sset.directory)
    _hash_lines(h, (f"{j}\0{p}" for j, p in zip(jpgs, pngs, strict=True)))
    return {"name": sset.name, "images": len(sset.pairs), "sha256": h.hexdigest()}


def _sa1b_set(sset: Sa1bSet) -> dict:
    h = hashlib.sha256(b"sa1b\n")
    _hash_lines(h, _relative(sset.images, sset.directory))
    # Which annotations of which image are samples (the parse drops unusable ones).
    h.update(np.ascontiguousarray(sset.sample_image, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(sset.sample_mask, dtype="<i4").tobytes())
    return {"name": sset.name, "images": len(sset.images), "samples": len(sset), "sha256": h.hexdigest()}


def index_fingerprint(index: VideoIndex | StaticIndex) -> list[dict]:
    """Per dataset of a stage's index, in order: its name, counts and the sha256 of what its sampler draws
    from (the listing and what was derived from it, not the files' bytes: the data check reads those)."""
    out = []
    for s in index.sets:
        if isinstance(s, VideoSet):
            out.append(_video_set(s))
        elif isinstance(s, Sa1bSet):
            out.append(_sa1b_set(s))
        else:
            out.append(_static_set(s))
    return out


def _counts(entry: dict) -> str:
    return ", ".join(f"{entry[k]} {k}" for k in ("videos", "frames", "images", "samples") if k in entry)


def data_changes(before: Sequence[dict], now: Sequence[dict]) -> list[str]:
    """One line per dataset whose fingerprint differs between a checkpoint's and this launch's (empty: the same
    data). Entries that are not fingerprints (a foreign checkpoint) are ignored."""
    old = {e["name"]: e for e in before if isinstance(e, dict) and isinstance(e.get("name"), str)}
    new = {e["name"]: e for e in now}
    lines = []
    for name, e in new.items():
        o = old.get(name)
        if o is None:
            lines.append(f"{name}: not in the checkpoint's data (now {_counts(e)})")
        elif o.get("sha256") != e["sha256"]:
            was, now_counts = _counts(o), _counts(e)
            lines.append(
                f"{name}: {was} -> {now_counts}"
                if was != now_counts
                else f"{name}: the same {was}, other contents (frame names, empty-mask lists or labels)"
            )
    lines += [f"{name}: no longer in the data (was {_counts(o)})" for name, o in old.items() if name not in new]
    return lines

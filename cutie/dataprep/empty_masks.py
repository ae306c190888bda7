"""Empty-mask lists: which training frames have an all-zero mask, per video dataset.

File format (what cutie/data/index/datasets.py's load_empty_masks reads), one file per dataset named after its key in
datasets.yaml (DAVIS.txt, YouTubeVOS.txt, MOSE.txt, BURST.txt, OVIS.txt), by default where the config's
`data.vos_datasets.<NAME>.empty_masks` points (${cache_root}/empty_masks/<NAME>.txt):

    # empty masks of YouTubeVOS: <video>/<frame>.png whose pixels are all 0; mask folder: ...
    003234408d/00000.png
    003234408d/00005.png

Lines starting with '#' are comments; the others are `<video>/<mask file name>`, sorted. A frame listed here can
still be sampled as a later frame of a clip, never as the first (the loader needs objects in frame 0).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cutie.dataprep.convert import ForkSafeBar
from cutie.utils.atomic import atomic_write_bytes
from cutie.utils.paths import check_no_symlink_inside


class MaskReadError(OSError):
    """Some masks (or mask folders) could not be read; the message names them and the fix. No list was written."""

    def __init__(self, dataset: str, unreadable: list[str]):
        self.unreadable = unreadable
        shown = "\n  ".join(unreadable[:10])
        more = f"\n  ... and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
        super().__init__(
            f"{dataset}: {len(unreadable)} mask file(s) or folder(s) could not be read, no list written:"
            f"\n  {shown}{more}\n  fix: re-extract or re-convert these masks (or fix their permissions), then rerun"
        )


@dataclass
class EmptyMaskList:
    dataset: str
    mask_dir: Path
    videos: int
    frames: int
    empty: list[str]  # "<video>/<frame>.png", sorted


def _empty_in_video(args: tuple[str, str]) -> tuple[int, list[str], list[str]]:
    """(masks seen, empty ones, unreadable ones as 'path: reason') of one video folder."""
    mask_dir, video = args
    try:
        names = sorted(n for n in os.listdir(os.path.join(mask_dir, video)) if n.lower().endswith(".png"))
    except OSError as e:
        return 0, [], [f"{os.path.join(mask_dir, video)}: {e.strerror or e}"]
    empty, unreadable = [], []
    for n in names:
        path = os.path.join(mask_dir, video, n)
        try:
            with Image.open(path) as m:
                pixels = np.asarray(m)  # decodes the whole file: a truncated one fails here
        # PIL's errors for corrupt, truncated or non-PNG data, and for a header claiming too many pixels
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            unreadable.append(f"{path}: {e}")
            continue
        if not pixels.any():  # palette index 0 everywhere = no object
            empty.append(f"{video}/{n}")
    return len(names), empty, unreadable


def scan(dataset: str, mask_dir: Path, workers: int | None = None) -> EmptyMaskList:
    """List the all-zero masks under mask_dir/<video>/*.png (parallel over videos). Raises MaskReadError naming
    every mask that cannot be decoded (an incomplete list would let the loader start clips on empty frames)."""
    if not mask_dir.is_dir():
        raise FileNotFoundError(
            f"{dataset}: mask directory {mask_dir} does not exist (fix: link/convert the dataset, or check data_root)"
        )
    videos = sorted(d.name for d in mask_dir.iterdir() if d.is_dir())
    tasks = [(str(mask_dir), v) for v in videos]
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks) or 1))
    # every mask is decoded: minutes for a large dataset, so show it (the next dataset's pool forks after the bar)
    bar = ForkSafeBar(total=len(tasks), desc=f"{dataset} masks", unit="video", file=sys.stderr, dynamic_ncols=True)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with bar, mp.get_context(method).Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        mapped = map(_empty_in_video, tasks) if pool is None else pool.imap(_empty_in_video, tasks, chunksize=4)
        results = []
        for r in mapped:  # in task order
            results.append(r)
            bar.update(1)
    unreadable = [u for _, _, bad in results for u in bad]
    if unreadable:
        raise MaskReadError(dataset, unreadable)
    frames = sum(n for n, _, _ in results)
    empty = sorted(e for _, lst, _ in results for e in lst)
    return EmptyMaskList(dataset, mask_dir, len(videos), frames, empty)


def report_root(target: Path, cache_root: Path, out: Path | None) -> Path:
    """The folder a list's write is confined to: `out` when given, else `cache_root` when the target lies below it
    (so a link planted at cache_root/empty_masks is refused), else the target's own folder. That root itself may be
    a link: it is where the user chose to put the lists."""
    if out is not None:
        return out
    return cache_root if cache_root in target.parents else target.parent


def write(lst: EmptyMaskList, path: Path, root: Path | None = None) -> None:
    """Writes the list atomically; with `root`, refuses first a symlink on the way from `root` to `path`."""
    if root is not None:
        check_no_symlink_inside(root, path)  # PathEscapeError names the link and the fix
    header = (
        f"# empty masks of {lst.dataset}: <video>/<frame>.png whose pixels are all 0\n"
        f"# mask folder: {lst.mask_dir}; {lst.videos} videos, {lst.frames} masks, {len(lst.empty)} empty\n"
    )
    atomic_write_bytes(path, (header + "".join(f"{e}\n" for e in lst.empty)).encode("utf-8"))

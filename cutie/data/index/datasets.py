"""Dataset index: find the training images and videos named by the data config, and validate them up front.

Every check that can fail on a bad dataset runs here, before any worker starts: the folder structure and every
frame's files (cutie/data/index/scan.py, cutie/data/index/frame_check.py; cached under cache_root, so a second check
of an unchanged dataset reads no image). All problems of a call come back as ONE `DataValidationError` naming the
dataset, the first offending paths, their count and the fix. `scan_*` never raise on data problems: they return
a `DatasetReport` (the row of scripts/check_data.py's table).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cutie.config.train import STAGES, DataConfig, to_dict
from cutie.data.index.problems import DatasetReport, DataValidationError, Problem
from cutie.data.index.sa1b import STRUCTURE as SA1B_STRUCTURE
from cutie.data.index.sa1b import Sa1bSet, scan_sa1b_dataset
from cutie.data.index.scan import (
    StaticSet,
    VideoSet,
    load_empty_masks,
    load_subset,
    scan_static_dataset,
    scan_val_dataset,
    scan_video_dataset,
    val_paths,
)

__all__ = [
    "DataValidationError",
    "DatasetReport",
    "Problem",
    "Sa1bSet",
    "StaticIndex",
    "StaticSet",
    "VideoIndex",
    "VideoSet",
    "build_static_index",
    "build_video_index",
    "annotation_lines",
    "format_table",
    "load_empty_masks",
    "load_subset",
    "scan_static_dataset",
    "scan_video_dataset",
    "summarize",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass
class VideoIndex:
    sets: list[VideoSet]
    # The multiplied seed list of the official loader, as parallel arrays: (set, video, frame).
    seed_set: np.ndarray
    seed_video: np.ndarray
    seed_frame: np.ndarray

    def __len__(self) -> int:
        return len(self.seed_set)


@dataclass
class StaticIndex:
    sets: list[StaticSet | Sa1bSet]
    seed_set: np.ndarray  # multiplied list: (set, pair); an SA-1B set's pairs are its (image, mask) samples
    seed_pair: np.ndarray

    def __len__(self) -> int:
        return len(self.seed_set)


# ----------------------------------------------------------------------------------------------- whole stages


def _raise_if_problems(reports: list[DatasetReport], what: str) -> None:
    bad = [r for r in reports if r.problems]
    if not bad:
        return
    lines = [f"The {what} data is not usable ({sum(len(r.issues) for r in bad)} problems):"]
    for r in bad:
        for p in r.problems:
            lines.append(f"  [{r.name}] {p}")
    lines.append("Run scripts/check_data.py for the full table.")
    raise DataValidationError("\n".join(lines))


def as_mapping(data_cfg: DataConfig | Mapping) -> Mapping:
    """The data config as nested mappings (the typed DataConfig of the training config, or a plain mapping
    as tests and tools write it)."""
    return to_dict(data_cfg) if isinstance(data_cfg, DataConfig) else data_cfg


def _names(data_cfg: Mapping, stage: str) -> list[str]:
    names = list(data_cfg[stage]["datasets"])
    if not names:
        raise DataValidationError(f"data.{stage}.datasets is empty (fix: name at least one dataset)")
    return names


def _lookup(data_cfg: Mapping, group: str, name: str) -> Mapping:
    table = data_cfg.get(group) or {}
    if name not in table:
        raise DataValidationError(
            f"dataset {name!r} is not defined under data.{group} (known: {', '.join(sorted(table))}); "
            f"fix: define it in cutie/config/data/datasets.yaml or drop it from the stage's dataset list"
        )
    return table[name]


def build_video_index(
    data_cfg: DataConfig | Mapping,
    data_root: str,
    seq_length: int,
    cache_root: str | None = None,
    read_files: bool = True,
) -> VideoIndex:
    """The main-training index over data_cfg.main_training.datasets; raises DataValidationError."""
    data_cfg = as_mapping(data_cfg)
    sets, reports = [], []
    for name in _names(data_cfg, "main_training"):
        cfg = _lookup(data_cfg, "vos_datasets", name)
        vset, rep = scan_video_dataset(name, cfg, data_root, seq_length, read_files, cache_root)
        reports.append(rep)
        if vset is not None:
            sets.append(vset)
    _raise_if_problems(reports, "main-training")
    for rep in reports:
        _log_annotation(rep)
    seed_set, seed_video, seed_frame = [], [], []
    for si, vset in enumerate(sets):
        frames = sum(len(j) for j in vset.jpgs)
        log.info(
            "%s: %d videos, %d frames, multiplied to %d seeds",
            vset.name,
            len(vset.videos),
            frames,
            frames * vset.multiplier,
        )
        for vi, names in enumerate(vset.jpgs):
            n = len(names) * vset.multiplier
            seed_set.append(np.full(n, si, np.int32))
            seed_video.append(np.full(n, vi, np.int32))
            seed_frame.append(np.tile(np.arange(len(names), dtype=np.int32), vset.multiplier))
    return VideoIndex(sets, np.concatenate(seed_set), np.concatenate(seed_video), np.concatenate(seed_frame))


def scan_image_dataset(
    name: str, cfg: Mapping, data_root: str, read_files: bool = True, cache_root: str | None = None
) -> tuple[StaticSet | Sa1bSet | None, DatasetReport]:
    """A static set by its data_structure: image/mask pairs (0, 1) or an SA-1B folder ('sa1b')."""
    scan = scan_sa1b_dataset if cfg.get("data_structure") == SA1B_STRUCTURE else scan_static_dataset
    return scan(name, cfg, data_root, read_files, cache_root)


def _samples(sset: StaticSet | Sa1bSet) -> int:
    return len(sset) if isinstance(sset, Sa1bSet) else len(sset.pairs)


def _log_annotation(rep: DatasetReport) -> None:
    """What training does with a sparse or partially labelled dataset, said once at start-up (not problems)."""
    if rep.sparse:
        steps = ", ".join(f"{n} with step {k}" for k, n in sorted(rep.sparse_steps.items()))
        log.info("%s: %d sparse videos (%s): clips use their annotated frames only", rep.name, rep.sparse, steps)
    if rep.partial:
        names = ", ".join(sorted(rep.partial)[:3]) + (", ..." if len(rep.partial) > 3 else "")
        log.warning(
            "%s: partial labels in %d videos (%s); clips start on objects labelled again later; %d videos without "
            "such an object are excluded",
            rep.name,
            len(rep.partial),
            names,
            rep.excluded_untracked,
        )
    if rep.skipped:
        log.warning(
            "%s: %d wrong-size masks left out (their frames count as unannotated), e.g. %s",
            rep.name,
            len(rep.skipped),
            rep.skipped[0].where,
        )


def build_static_index(
    data_cfg: DataConfig | Mapping, data_root: str, cache_root: str | None = None, read_files: bool = True
) -> StaticIndex:
    """The pre-training index over data_cfg.pre_training.datasets; raises DataValidationError."""
    data_cfg = as_mapping(data_cfg)
    sets, reports = [], []
    for name in _names(data_cfg, "pre_training"):
        cfg = _lookup(data_cfg, "image_datasets", name)
        sset, rep = scan_image_dataset(name, cfg, data_root, read_files, cache_root)
        reports.append(rep)
        if sset is not None:
            sets.append(sset)
    _raise_if_problems(reports, "pre-training")
    seed_set, seed_pair = [], []
    for si, sset in enumerate(sets):
        n = _samples(sset)
        log.info("%s: %d samples, multiplied to %d", sset.name, n, n * sset.multiplier)
        seed_set.append(np.full(n * sset.multiplier, si, np.int32))
        seed_pair.append(np.tile(np.arange(n, dtype=np.int32), sset.multiplier))
    return StaticIndex(sets, np.concatenate(seed_set), np.concatenate(seed_pair))


def summarize(
    data_cfg: DataConfig | Mapping,
    data_root: str,
    seq_length: int = 8,
    stages: Iterable[str] = STAGES,
    cache_root: str | None = None,
) -> list[DatasetReport]:
    """One report per dataset used by the given stages, and the validation set's with main training when its
    folders exist (for scripts/check_data.py); never raises on data.

    Every frame's files are checked; cache_root (None: no cache) keeps the results of good files."""
    data_cfg = as_mapping(data_cfg)
    reports = []
    stages = list(stages)
    for stage in stages:
        for name in data_cfg[stage]["datasets"]:
            if stage == "pre_training":
                cfg = _lookup(data_cfg, "image_datasets", name)
                reports.append(scan_image_dataset(name, cfg, data_root, cache_root=cache_root)[1])
            else:
                cfg = _lookup(data_cfg, "vos_datasets", name)
                reports.append(scan_video_dataset(name, cfg, data_root, seq_length, cache_root=cache_root)[1])
    val = data_cfg.get("val_dataset")
    if "main_training" in stages and val and val_paths(val, data_root):  # validated during main training
        reports.append(scan_val_dataset(val, data_root, cache_root))
    return reports


def validate(
    data_cfg: DataConfig | Mapping,
    data_root: str,
    seq_length: int = 8,
    stages: Iterable[str] = STAGES,
    cache_root: str | None = None,
) -> list[DatasetReport]:
    """Like summarize, but raises one DataValidationError listing every problem."""
    reports = summarize(data_cfg, data_root, seq_length, stages, cache_root)
    _raise_if_problems(reports, " + ".join(stages))
    return reports


def format_table(reports: list[DatasetReport]) -> str:
    """A plain-text table: dataset, path, found, videos, frames, masks, problems."""
    head = ("dataset", "path", "found", "videos", "frames", "masks", "problems")
    rows = [
        (
            r.name,
            r.path,
            "yes" if r.found else "NO",
            str(r.videos) if r.kind == "video" else "-",
            str(r.frames),
            str(r.masks),
            "; ".join(r.problems) or "-",
        )
        for r in reports
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    widths[-1] = 0  # the problems column is not padded
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths[:-1]) + ("--------",))] + [fmt(r) for r in rows])


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def annotation_lines(r: DatasetReport, listed: int = 20) -> list[str]:
    """How a video dataset is annotated (dense / sparse videos, annotation steps, partial labels, exclusions)."""
    if r.kind != "video" or not r.found:
        return []
    steps = ", ".join(f"step {k}: {n}" for k, n in sorted(r.sparse_steps.items()))
    line = f"{r.name}: {r.dense} dense, {r.sparse} sparse videos" + (f" (annotation {steps})" if steps else "")
    excluded = []
    if r.excluded_short:
        excluded.append(f"{r.excluded_short} with fewer annotated frames than seq_length")
    if r.excluded_untracked:
        excluded.append(f"{r.excluded_untracked} with no object labelled in two annotated frames")
    if excluded:
        line += "; excluded: " + ", ".join(excluded)
    lines = [line]
    if r.partial:
        shown = [f"{v} (objects {', '.join(map(str, objs))})" for v, objs in sorted(r.partial.items())[:listed]]
        more = f", ... ({len(r.partial)} in all)" if len(r.partial) > listed else ""
        lines.append(
            f"{r.name}: partial labels (an object labelled in one annotated frame only) in "
            f"{_plural(len(r.partial), 'video')}: {', '.join(shown)}{more}; clips start only on an object that is "
            f"labelled again later (fix: label every object in every annotated frame where it is visible)"
        )
    return lines

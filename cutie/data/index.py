"""Dataset index: find the training images and videos named by the data config, and validate them up front.

Every check that can fail on a bad dataset runs here, before any worker starts, and all problems of a call come
back as ONE `DataValidationError` naming the dataset, the first offending paths, their count and the fix.
`scan_*` never raise on data problems: they return a `DatasetReport` (the row of scripts/check_data.py's table).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from cutie.data.masks import ID_MODES

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg")
MASK_EXT = ".png"
MAX_LISTED = 3  # offending paths quoted per problem


class DataValidationError(RuntimeError):
    """The configured training data cannot be used; the message says what and how to fix it."""


@dataclass
class DatasetReport:
    """One row of the data check table."""

    name: str
    kind: str  # 'video' | 'static'
    path: str
    found: bool
    videos: int = 0  # usable videos (static: 0)
    frames: int = 0  # usable JPEGs
    masks: int = 0  # PNGs found
    excluded_short: int = 0  # videos shorter than the clip length
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.found and not self.problems


@dataclass
class VideoSet:
    """One video dataset: per video the frame file names, paired JPEG/PNG by stem, sorted."""

    name: str
    image_dir: str
    mask_dir: str
    frame_interval: int
    multiplier: int
    videos: list[str]
    jpgs: list[list[str]]  # file names inside image_dir/<video>
    pngs: list[list[str]]  # file names inside mask_dir/<video>, same order
    empty: list[np.ndarray | None]  # per video: bool per frame, True = mask known empty (None: no list)


@dataclass
class StaticSet:
    """One static image dataset: (jpg path, png path) pairs."""

    name: str
    directory: str
    multiplier: int
    pairs: list[tuple[str, str]]


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
    sets: list[StaticSet]
    seed_set: np.ndarray  # multiplied list: (set, pair)
    seed_pair: np.ndarray

    def __len__(self) -> int:
        return len(self.seed_set)


# ----------------------------------------------------------------------------------------------- small readers


def _resolve(root: str, p: str) -> str:
    """Config paths are relative to data_root; absolute paths (data=custom) pass through."""
    return os.path.normpath(os.path.join(root, os.path.expanduser(str(p))))


def load_subset(path: str) -> set[str]:
    """A subset file: one video name per line (DAVIS ImageSets style); blank lines and '#' comments ignored."""
    with open(path, encoding="utf-8") as f:
        return {ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")}


def load_empty_masks(path: str) -> dict[str, set[str]]:
    """Frames whose mask is empty, as {video: {frame stem}}.

    Accepted formats: JSON {video: [stem, ...]} (the official find_empty_mask output) or text with one
    `video/frame` per line (extension optional; blank lines and '#' comments ignored)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out: dict[str, set[str]] = {}
    if text.lstrip().startswith("{"):
        for video, frames in json.loads(text).items():
            out[str(video)] = {os.path.splitext(str(s))[0] for s in frames}
        return out
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("#"):
            continue
        video, _, frame = ln.replace("\\", "/").rpartition("/")
        if not video:
            parts = ln.split()
            if len(parts) != 2:
                raise DataValidationError(f"{path}: cannot parse line {ln!r}; expected 'video/frame'")
            video, frame = parts
        out.setdefault(video, set()).add(os.path.splitext(frame)[0])
    return out


def _header(path: str) -> tuple[tuple[int, int], str] | None:
    """((W, H), mode) from the file header, or None if unreadable."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, ValueError, SyntaxError):
        return None


def _size(path: str) -> tuple[int, int] | None:
    h = _header(path)
    return None if h is None else h[0]


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_LISTED else "")


def _split_by_ext(names: Iterable[str], exts: tuple[str, ...]) -> dict[str, str]:
    return {os.path.splitext(n)[0]: n for n in names if os.path.splitext(n)[1].lower() in exts}


# ----------------------------------------------------------------------------------------------- video sets


def scan_video_dataset(
    name: str, cfg: Mapping, data_root: str, seq_length: int, check_sizes: bool = True
) -> tuple[VideoSet | None, DatasetReport]:
    """Index one video dataset (DAVIS layout: image_directory/<video>/*.jpg, mask_directory/<video>/*.png)."""
    image_dir = _resolve(data_root, cfg["image_directory"])
    mask_dir = _resolve(data_root, cfg["mask_directory"])
    rep = DatasetReport(name=name, kind="video", path=image_dir, found=os.path.isdir(image_dir))
    key = f"data.vos_datasets.{name}"
    if not rep.found:
        rep.problems.append(
            f"image directory {image_dir} does not exist (fix: link the dataset under data_root or set "
            f"{key}.image_directory)"
        )
        return None, rep
    if not os.path.isdir(mask_dir):
        rep.problems.append(
            f"mask directory {mask_dir} does not exist (fix: set {key}.mask_directory or add the annotations)"
        )
        return None, rep

    subset = None
    if cfg.get("subset"):
        subset_path = _resolve(data_root, cfg["subset"])
        if not os.path.isfile(subset_path):
            rep.problems.append(f"subset file {subset_path} does not exist (fix: add it or set {key}.subset=null)")
            return None, rep
        subset = load_subset(subset_path)

    empty_lists = None
    empty_path = cfg.get("empty_masks")
    if empty_path:
        empty_path = os.path.expanduser(str(empty_path))
        if os.path.isfile(empty_path):
            try:
                empty_lists = load_empty_masks(empty_path)
            except (ValueError, DataValidationError) as e:
                rep.problems.append(f"empty-mask list {empty_path} is unreadable ({e}); fix: regenerate it")
        else:
            log.info("%s: no empty-mask list at %s; first frames are checked after decoding", name, empty_path)

    unpaired: list[str] = []
    missing_masks: list[str] = []
    size_mismatch: list[str] = []
    unreadable: list[str] = []
    colour_masks: list[str] = []
    short: list[str] = []
    videos, jpgs, pngs, empties = [], [], [], []
    all_videos = sorted(d for d in os.listdir(image_dir) if os.path.isdir(os.path.join(image_dir, d)))
    for video in all_videos:
        if subset is not None and video not in subset:
            continue
        vdir, mdir = os.path.join(image_dir, video), os.path.join(mask_dir, video)
        images = _split_by_ext(os.listdir(vdir), IMAGE_EXTS)
        rep.frames += len(images)
        if not os.path.isdir(mdir):
            missing_masks.append(mdir)
            continue
        masks = _split_by_ext(os.listdir(mdir), (MASK_EXT,))
        rep.masks += len(masks)
        if images.keys() != masks.keys():
            lonely = sorted(set(images) ^ set(masks))[0]
            where = os.path.join(vdir, images[lonely]) if lonely in images else os.path.join(mdir, masks[lonely])
            unpaired.append(f"{where} ({len(set(images) ^ set(masks))} unpaired in {video})")
            continue
        stems = sorted(images)
        if len(stems) < seq_length:
            short.append(video)
            continue
        if check_sizes:
            jp, pp = os.path.join(vdir, images[stems[0]]), os.path.join(mdir, masks[stems[0]])
            js, mask_header = _size(jp), _header(pp)
            if js is None or mask_header is None:
                unreadable.append(jp if js is None else pp)
                continue
            ps, mode = mask_header
            if mode not in ID_MODES:
                colour_masks.append(f"{pp} (mode {mode})")
                continue
            if js != ps:
                size_mismatch.append(f"{jp} {js[0]}x{js[1]} vs {pp} {ps[0]}x{ps[1]}")
                continue
        videos.append(video)
        jpgs.append([images[s] for s in stems])
        pngs.append([masks[s] for s in stems])
        if empty_lists is not None:
            known = empty_lists.get(video, set())
            empties.append(np.array([s in known for s in stems], dtype=bool))
        else:
            empties.append(None)

    if subset is not None:
        absent = sorted(subset - set(all_videos))
        if absent:
            rep.problems.append(
                f"{len(absent)} videos of the subset list are missing from {image_dir}: {_first(absent)} "
                f"(fix: complete the download or edit the subset file)"
            )
    if missing_masks:
        rep.problems.append(
            f"{len(missing_masks)} videos have no mask folder: {_first(missing_masks)} "
            f"(fix: add the annotations, or remove those videos)"
        )
    if unpaired:
        rep.problems.append(
            f"{len(unpaired)} videos whose JPEGs and PNGs do not pair up by name: {_first(unpaired)} "
            f"(fix: every <video>/<frame>.jpg needs <video>/<frame>.png; re-extract or remove the frames)"
        )
    if size_mismatch:
        rep.problems.append(
            f"{len(size_mismatch)} videos whose image and mask sizes differ: {_first(size_mismatch)} "
            f"(fix: resize the masks to the frames with nearest-neighbour, or re-export them)"
        )
    if colour_masks:
        rep.problems.append(
            f"{len(colour_masks)} videos with colour (RGB) masks instead of object ids: {_first(colour_masks)} "
            f"(fix: save masks as palette PNGs whose indices are object ids, 0 = background, as DAVIS does)"
        )
    if unreadable:
        rep.problems.append(
            f"{len(unreadable)} unreadable files: {_first(unreadable)} (fix: re-download or delete them)"
        )
    if short:
        log.info(
            "%s: %d videos shorter than the clip length %d are excluded: %s",
            name,
            len(short),
            seq_length,
            _first(short),
        )
    rep.excluded_short = len(short)
    rep.videos = len(videos)
    if not videos and not rep.problems:
        rep.problems.append(
            f"no usable video in {image_dir} (fix: check the path; videos need >= {seq_length} paired frames)"
        )
    vset = VideoSet(
        name=name,
        image_dir=image_dir,
        mask_dir=mask_dir,
        frame_interval=max(1, int(cfg.get("frame_interval", 1))),
        multiplier=int(cfg.get("multiplier", 1)),
        videos=videos,
        jpgs=jpgs,
        pngs=pngs,
        empty=empties,
    )
    return vset, rep


# ----------------------------------------------------------------------------------------------- static sets


def scan_static_dataset(
    name: str, cfg: Mapping, data_root: str, check_sizes: bool = True
) -> tuple[StaticSet | None, DatasetReport]:
    """Index one static dataset: data_structure 0 = class/N.jpg + N.png (FSS), 1 = flat NAME.jpg + NAME.png."""
    directory = _resolve(data_root, cfg["directory"])
    structure = int(cfg.get("data_structure", 1))
    rep = DatasetReport(name=name, kind="static", path=directory, found=os.path.isdir(directory))
    key = f"data.image_datasets.{name}"
    if not rep.found:
        rep.problems.append(
            f"directory {directory} does not exist (fix: link the dataset under data_root or set {key}.directory)"
        )
        return None, rep
    if structure not in (0, 1):
        rep.problems.append(f"{key}.data_structure must be 0 (class/N.jpg) or 1 (flat NAME.jpg), not {structure}")
        return None, rep
    folders = [directory]
    if structure == 0:
        folders = sorted(
            os.path.join(directory, d) for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d))
        )
    pairs: list[tuple[str, str]] = []
    lonely: list[str] = []
    size_mismatch: list[str] = []
    unreadable: list[str] = []
    for folder in folders:
        names = os.listdir(folder)
        images = _split_by_ext(names, IMAGE_EXTS)
        masks = _split_by_ext(names, (MASK_EXT,))
        rep.frames += len(images)
        rep.masks += len(masks)
        for stem in sorted(images):
            jp = os.path.join(folder, images[stem])
            if stem not in masks:
                lonely.append(jp)
                continue
            pp = os.path.join(folder, masks[stem])
            if check_sizes:
                js, ps = _size(jp), _size(pp)
                if js is None or ps is None:
                    unreadable.append(jp if js is None else pp)
                    continue
                if js != ps:
                    size_mismatch.append(f"{jp} {js[0]}x{js[1]} vs {pp} {ps[0]}x{ps[1]}")
                    continue
            pairs.append((jp, pp))
    if lonely:
        rep.problems.append(
            f"{len(lonely)} images without a mask of the same name: {_first(lonely)} "
            f"(fix: add NAME.png beside NAME.jpg or remove the image)"
        )
    if size_mismatch:
        rep.problems.append(
            f"{len(size_mismatch)} image/mask pairs of different sizes: {_first(size_mismatch)} "
            f"(fix: resize the masks to the images with nearest-neighbour)"
        )
    if unreadable:
        rep.problems.append(f"{len(unreadable)} unreadable files: {_first(unreadable)} (fix: re-download or delete)")
    if not pairs and not rep.problems:
        expected = "class/N.jpg + class/N.png" if structure == 0 else "NAME.jpg + NAME.png"
        rep.problems.append(f"no image/mask pair in {directory} (fix: check the path; expected {expected})")
    return StaticSet(name, directory, int(cfg.get("multiplier", 1)), pairs), rep


# ----------------------------------------------------------------------------------------------- whole stages


def _raise_if_problems(reports: list[DatasetReport], what: str) -> None:
    bad = [r for r in reports if r.problems]
    if not bad:
        return
    lines = [f"The {what} data is not usable ({sum(len(r.problems) for r in bad)} problems):"]
    for r in bad:
        for p in r.problems:
            lines.append(f"  [{r.name}] {p}")
    lines.append("Run scripts/check_data.py for the full table.")
    raise DataValidationError("\n".join(lines))


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


def build_video_index(data_cfg: Mapping, data_root: str, seq_length: int) -> VideoIndex:
    """The main-training index over data_cfg.main_training.datasets; raises DataValidationError."""
    sets, reports = [], []
    for name in _names(data_cfg, "main_training"):
        vset, rep = scan_video_dataset(name, _lookup(data_cfg, "vos_datasets", name), data_root, seq_length)
        reports.append(rep)
        if vset is not None:
            sets.append(vset)
    _raise_if_problems(reports, "main-training")
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


def build_static_index(data_cfg: Mapping, data_root: str) -> StaticIndex:
    """The pre-training index over data_cfg.pre_training.datasets; raises DataValidationError."""
    sets, reports = [], []
    for name in _names(data_cfg, "pre_training"):
        sset, rep = scan_static_dataset(name, _lookup(data_cfg, "image_datasets", name), data_root)
        reports.append(rep)
        if sset is not None:
            sets.append(sset)
    _raise_if_problems(reports, "pre-training")
    seed_set, seed_pair = [], []
    for si, sset in enumerate(sets):
        log.info("%s: %d images, multiplied to %d", sset.name, len(sset.pairs), len(sset.pairs) * sset.multiplier)
        n = len(sset.pairs)
        seed_set.append(np.full(n * sset.multiplier, si, np.int32))
        seed_pair.append(np.tile(np.arange(n, dtype=np.int32), sset.multiplier))
    return StaticIndex(sets, np.concatenate(seed_set), np.concatenate(seed_pair))


def summarize(
    data_cfg: Mapping, data_root: str, seq_length: int = 8, stages: Iterable[str] = ("pre_training", "main_training")
) -> list[DatasetReport]:
    """One report per dataset used by the given stages (for scripts/check_data.py); never raises on data."""
    reports = []
    for stage in stages:
        for name in data_cfg[stage]["datasets"]:
            if stage == "pre_training":
                reports.append(scan_static_dataset(name, _lookup(data_cfg, "image_datasets", name), data_root)[1])
            else:
                reports.append(
                    scan_video_dataset(name, _lookup(data_cfg, "vos_datasets", name), data_root, seq_length)[1]
                )
    return reports


def validate(
    data_cfg: Mapping, data_root: str, seq_length: int = 8, stages: Iterable[str] = ("pre_training", "main_training")
) -> list[DatasetReport]:
    """Like summarize, but raises one DataValidationError listing every problem."""
    reports = summarize(data_cfg, data_root, seq_length, stages)
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

"""Dataset scans: one dataset folder -> its usable videos / image pairs and a list of typed `Problem`s.

A scan runs in three small phases: the folder structure of each video (listing, JPEG/PNG pairing, converter
completion records), one parallel, cached check of every file the usable videos name (cutie/data/index/frame_check.py),
and the per-video consistency of the file headers (sizes, mask modes). Problems are data, not text: they are
turned into messages in one place (cutie/data/index/problems.py).

Sparse annotation (cutie/data/index/annotation.py): a video may hold more JPEGs than PNGs. The annotated frames
(a JPEG with its PNG) are the video's training frames; a JPEG without a PNG is an unannotated frame (kept for
evaluation and visualisation), a PNG without its JPEG is a problem. A dataset entry may opt in to
`partial_labels` (the object ids of every mask are read, videos with partial labels are reported and a video
without an object labelled in two annotated frames is excluded) and to `wrong_size_masks: skip` (a mask of
another size than its frame is reported and its frame counts as unannotated, instead of failing the dataset).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cutie.data.index import frame_check
from cutie.data.index.annotation import annotation_step, partial_objects, tracked_somewhere
from cutie.data.index.problems import KINDS, MAX_LISTED, DatasetReport, DataValidationError, Problem, problem
from cutie.data.index.records import META_DIR, marker_path, read_marker
from cutie.utils import strict_json
from cutie.utils.frame_names import misordered_numbering
from cutie.utils.image_files import ID_MODES, FileError, FileInfo, FileResult

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg")
OTHER_IMAGE_EXTS = (".png", ".bmp", ".webp", ".tif", ".tiff")  # frames training cannot read: a problem, named
OTHER_MASK_EXTS = (".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")  # masks training cannot read: named too
MASK_EXT = ".png"


@dataclass
class VideoSet:
    """One video dataset: per video the annotated frames' file names (JPEG/PNG paired by stem, sorted): the
    clip frames. Unannotated JPEGs of sparse videos are not listed."""

    name: str
    image_dir: str
    mask_dir: str
    frame_interval: int
    multiplier: int
    videos: list[str]
    jpgs: list[list[str]]  # file names inside image_dir/<video>
    pngs: list[list[str]]  # file names inside mask_dir/<video>, same order
    empty: list[np.ndarray | None]  # per video: bool per frame, True = mask known empty (None: no list)
    # Per video: JPEGs between consecutive annotated frames (1: dense); max_skip is divided by
    # frame_interval * step, so a skip means the same time span in every video.
    steps: list[int] = field(default_factory=list)
    # partial_labels datasets: per video, per annotated frame, the object ids of its mask (else None); the
    # sampler draws a clip only when a first-frame object is labelled again later in it.
    ids: list[list[tuple[int, ...]]] | None = None

    @property
    def partial_labels(self) -> bool:
        return self.ids is not None


@dataclass
class StaticSet:
    """One static image dataset: (jpg path, png path) pairs."""

    name: str
    directory: str
    multiplier: int
    pairs: list[tuple[str, str]]


# ----------------------------------------------------------------------------------------------- small readers


def resolve(root: str, p: str) -> str:
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
        doc = strict_json.loads(text)  # a video listed twice would lose one list without a word
        if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
            raise DataValidationError(f"{path}: expected a JSON object {{video: [frame, ...]}}")
        for video, frames in doc.items():
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


def _split_by_ext(names: Iterable[str], exts: tuple[str, ...]) -> dict[str, str]:
    return {os.path.splitext(n)[0]: n for n in names if os.path.splitext(n)[1].lower() in exts}


def _file_problem(path: str, error: FileError) -> Problem:
    return problem(error.kind, path, error.detail)


def _check(rep: DatasetReport, tasks: list[tuple[str, str]], cache_root: str | None, key: str) -> dict[str, FileResult]:
    results, stats = frame_check.check_files(tasks, cache_root, key, desc=f"check {rep.name}")
    rep.checked = stats
    rep.notes += stats.notes
    for note in stats.notes:
        log.warning("%s: %s", rep.name, note)
    return results


# ----------------------------------------------------------------------------------------------- video sets


@dataclass
class _Video:
    """One video that passed the structure phase: its annotated frames (the ones with a mask)."""

    name: str
    image_dir: str  # image_dir/<video>
    mask_dir: str
    images: list[str]  # every JPEG, annotated or not, sorted by stem
    positions: list[int]  # each annotated frame's index in `images`
    stems: list[str]
    jpgs: list[str]
    pngs: list[str]
    ids: list[tuple[int, ...]] | None = None  # partial_labels: the object ids of each mask

    @property
    def frames(self) -> int:
        return len(self.images)

    def paths(self) -> list[tuple[str, str]]:
        pairs = zip(self.jpgs, self.pngs, strict=True)
        return [(os.path.join(self.image_dir, j), os.path.join(self.mask_dir, p)) for j, p in pairs]

    def drop(self, frames: set[int]) -> None:
        """Treat these annotated frames (indices into the lists) as unannotated."""
        keep = [i for i in range(len(self.stems)) if i not in frames]
        self.positions = [self.positions[i] for i in keep]
        self.stems = [self.stems[i] for i in keep]
        self.jpgs = [self.jpgs[i] for i in keep]
        self.pngs = [self.pngs[i] for i in keep]
        if self.ids is not None:
            self.ids = [self.ids[i] for i in keep]


def _video_structure(rep: DatasetReport, image_dir: str, mask_dir: str, video: str) -> _Video | Problem:
    """List one video's folders and pair its PNGs with its JPEGs by stem (JPEGs without a PNG: unannotated)."""
    vdir, mdir = os.path.join(image_dir, video), os.path.join(mask_dir, video)
    listing = os.listdir(vdir)
    images = _split_by_ext(listing, IMAGE_EXTS)
    rep.frames += len(images)
    other = sorted(n for n in listing if os.path.splitext(n)[1].lower() in OTHER_IMAGE_EXTS and n[0] != ".")
    if other:  # read as frames by evaluation, skipped by training: a silent gap, or a mask "without a frame"
        return problem("non_jpeg_frame", os.path.join(vdir, other[0]), f"{len(other)} non-JPEG frames in {video}")
    misordered = misordered_numbering(images.values())
    if misordered is not None:
        detail = f"{misordered[0]} sorts before {misordered[1]}"
        return problem("misordered_names", os.path.join(vdir, misordered[1]), detail)
    if not os.path.isdir(mdir):
        return problem("no_mask_folder", mdir)
    mask_listing = os.listdir(mdir)
    masks = _split_by_ext(mask_listing, (MASK_EXT,))
    rep.masks += len(masks)
    lossy = sorted(n for n in mask_listing if os.path.splitext(n)[1].lower() in OTHER_MASK_EXTS and n[0] != ".")
    if lossy:  # not read as masks: the video would look unannotated ("annotate more frames")
        return problem("non_png_mask", os.path.join(mdir, lossy[0]), f"{len(lossy)} masks that are not PNGs in {video}")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        where = os.path.join(mdir, masks[orphans[0]])
        return problem("unpaired", where, f"{len(orphans)} masks without a frame in {video}")
    every = sorted(images)
    positions = [i for i, s in enumerate(every) if s in masks]
    stems = [every[i] for i in positions]
    return _Video(
        video, vdir, mdir, [images[s] for s in every], positions, stems, [images[s] for s in stems],
        [masks[s] for s in stems],
    )  # fmt: skip


def _conversion_problems(image_dir: str, videos: list[str]) -> list[Problem]:
    """A converter output (a _meta folder beside JPEGImages) is complete only where every video has its valid
    completion record, written last by cutie/dataprep/convert.py."""
    output = Path(image_dir).parent
    meta = output / META_DIR
    if not meta.is_dir():
        return []
    out = [
        problem("incomplete_conversion", os.path.join(image_dir, v), f"no valid completion record {record}")
        for v in videos
        if read_marker(record := marker_path(output, v)) is None
    ]
    have = set(videos)
    for record in sorted(meta.glob("*.json")):
        if record.stem not in have:
            out.append(problem("incomplete_conversion", str(record), "completion record of a video with no frames"))
    return out


def _video_file_problems(
    video: _Video, results: Mapping[str, FileResult], skip_wrong_size: bool = False
) -> tuple[list[Problem], list[Problem]]:
    """Every annotated frame: its files readable and sound, its mask an id map of its JPEG's size, the first
    frame's size. (problems, masks skipped): with skip_wrong_size a mask of another size than its frame is
    skipped (its frame dropped from the video's annotated frames) instead of being a problem."""
    out: list[Problem] = []
    skipped: dict[int, Problem] = {}
    first: tuple[str, tuple[int, int]] | None = None
    for k, (jp, pp) in enumerate(video.paths()):
        ji, pi = results[jp], results[pp]
        out += [_file_problem(p, r) for p, r in ((jp, ji), (pp, pi)) if isinstance(r, FileError)]
        if not (isinstance(ji, FileInfo) and isinstance(pi, FileInfo)):
            continue
        if pi.mode not in ID_MODES:
            out.append(problem("colour_mask", pp, f"mode {pi.mode}"))
        elif pi.wide_ids:
            out.append(problem("wide_ids", pp, f"mode {pi.mode}"))
        if pi.size != ji.size:
            found = problem(
                "size_mismatch", pp, f"mask {_wh(pi.size)}, its frame {os.path.basename(jp)} is {_wh(ji.size)}"
            )
            if skip_wrong_size:
                skipped[k] = problem(
                    "size_mismatch",
                    pp,
                    found.detail + "; its frame is used as unannotated",
                    KINDS["size_mismatch"][1] + " to use the frame in training",
                )
            else:
                out.append(found)
        if first is None:
            first = (os.path.basename(jp), ji.size)
        elif ji.size != first[1]:
            out.append(problem("frame_size", jp, f"{_wh(ji.size)}, the first frame {first[0]} is {_wh(first[1])}"))
    if skipped and not out:
        video.drop(set(skipped))
    return out, list(skipped.values())


def _wh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _empty_lists(rep: DatasetReport, name: str, path: object, key: str) -> dict[str, set[str]] | None:
    if not path:
        return None
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        log.info("%s: no empty-mask list at %s; first frames are checked after decoding", name, path)
        return None
    try:
        return load_empty_masks(path)
    except (ValueError, UnicodeDecodeError, DataValidationError) as e:
        rep.issues.append(
            problem("config", path, f"empty-mask list {path} is unreadable ({e})", f"regenerate it or unset {key}")
        )
        return None


# data=custom's entry takes both folders from data.custom_root: the fix names that key, not the entry's own
_CUSTOM_KEY = "data.vos_datasets.CUSTOM"
_CUSTOM_ROOT_FIX = (
    "set data.custom_root to the folder that holds JPEGImages/<video>/ and Annotations/<video>/ (an absolute path; "
    "a relative one hangs off data_root)"
)


def _video_folders(
    rep: DatasetReport, image_dir: str, mask_dir: str, cfg: Mapping, data_root: str, key: str
) -> list[str] | None:
    """The folders of a video set and the videos to scan (None when the set cannot be scanned at all)."""
    if not rep.found:
        detail = f"image directory {image_dir} does not exist"
        fix = f"link the dataset under data_root or set {key}.image_directory"
        fix = _CUSTOM_ROOT_FIX if key == _CUSTOM_KEY else fix
        rep.issues.append(problem("missing", image_dir, detail, fix))
        return None
    if not os.path.isdir(mask_dir):
        detail = f"mask directory {mask_dir} does not exist"
        fix = _CUSTOM_ROOT_FIX if key == _CUSTOM_KEY else f"set {key}.mask_directory or add the annotations"
        rep.issues.append(problem("missing", mask_dir, detail, fix))
        return None
    all_videos = sorted(d for d in os.listdir(image_dir) if os.path.isdir(os.path.join(image_dir, d)))
    if not cfg.get("subset"):
        return all_videos
    subset_path = resolve(data_root, cfg["subset"])
    if not os.path.isfile(subset_path):
        detail = f"subset file {subset_path} does not exist"
        rep.issues.append(problem("missing", subset_path, detail, f"add it or set {key}.subset=null"))
        return None
    subset = load_subset(subset_path)
    rep.issues += [problem("subset_missing", os.path.join(image_dir, v)) for v in sorted(subset - set(all_videos))]
    return [v for v in all_videos if v in subset]


def _structures(rep: DatasetReport, image_dir: str, mask_dir: str, names: list[str]) -> list[_Video]:
    """The videos whose folders pair up (the others are problems)."""
    videos = []
    for video in names:
        found = _video_structure(rep, image_dir, mask_dir, video)
        if isinstance(found, Problem):
            rep.issues.append(found)
        else:
            rep.annotated[video] = len(found.stems)
            videos.append(found)
    return videos


def _long_enough(rep: DatasetReport, videos: list[_Video], seq_length: int) -> list[_Video]:
    """The videos that hold a whole clip of annotated frames (shorter ones are excluded, not problems)."""
    keep = [v for v in videos if len(v.stems) >= seq_length]
    rep.excluded_short += len(videos) - len(keep)
    return keep


def _sound_videos(
    rep: DatasetReport,
    videos: list[_Video],
    cache_root: str | None,
    key: str,
    *,
    ids: bool,
    skip_wrong_size: bool,
    short: list[_Video],
) -> list[_Video]:
    """Check every file of the videos at once (parallel, cached; with ids: the object ids of every mask); the
    videos without a problem. With ids, the masks of the short (unused) videos are read too, for the
    partial-label report only (their defects are not problems: training does not read them)."""
    png_kind = "png_ids" if ids else "png"
    tasks = [t for v in videos for jp, pp in v.paths() for t in ((jp, "jpeg"), (pp, png_kind))]
    extra = [pp for v in short for _, pp in v.paths()] if ids else []
    results = _check(rep, tasks + [(pp, "png_ids") for pp in extra], cache_root, key)
    for v in short if ids else []:
        infos = [results[pp] for _, pp in v.paths()]
        if all(isinstance(i, FileInfo) and i.ids is not None for i in infos):
            partial = partial_objects([i.ids for i in infos])
            if partial:
                rep.partial[v.name] = partial
    sound = []
    for v in videos:
        if ids:
            infos = [results[pp] for _, pp in v.paths()]
            v.ids = [i.ids or () if isinstance(i, FileInfo) else () for i in infos]
        found, skipped = _video_file_problems(v, results, skip_wrong_size)
        rep.issues += found
        rep.skipped += skipped
        rep.annotated[v.name] = len(v.stems)  # skipped masks are no longer annotated frames
        if not found:
            sound.append(v)
    return sound


def _trackable(rep: DatasetReport, videos: list[_Video]) -> list[_Video]:
    """partial_labels: note the videos with partial labels; keep those with an object labelled in two annotated
    frames (only they can give a clip whose first-frame object is labelled again)."""
    keep = []
    for v in videos:
        partial = partial_objects(v.ids)
        if partial:
            rep.partial[v.name] = partial
        if tracked_somewhere(v.ids):
            keep.append(v)
        else:
            rep.excluded_untracked += 1
    return keep


def _count_annotation(rep: DatasetReport, videos: list[_Video]) -> list[int]:
    """Dense / sparse counts and each video's annotation step."""
    steps = []
    for v in videos:
        step = annotation_step(v.positions)
        steps.append(step)
        if len(v.positions) == v.frames:
            rep.dense += 1
        else:
            rep.sparse_steps[step] = rep.sparse_steps.get(step, 0) + 1
    return steps


def _video_set(
    name: str,
    cfg: Mapping,
    dirs: tuple[str, str],
    videos: list[_Video],
    empty_lists: dict[str, set[str]] | None,
    steps: list[int],
) -> VideoSet:
    empties = [
        None if empty_lists is None else np.array([s in empty_lists.get(v.name, set()) for s in v.stems], bool)
        for v in videos
    ]
    return VideoSet(
        name=name,
        image_dir=dirs[0],
        mask_dir=dirs[1],
        frame_interval=max(1, int(cfg.get("frame_interval", 1))),
        multiplier=int(cfg.get("multiplier", 1)),
        videos=[v.name for v in videos],
        jpgs=[v.jpgs for v in videos],
        pngs=[v.pngs for v in videos],
        empty=empties,
        steps=steps,
        ids=[v.ids or [] for v in videos] if cfg.get("partial_labels", False) else None,
    )


def _unusable(rep: DatasetReport, image_dir: str, seq_length: int) -> Problem:
    """Why no video of the dataset can give a clip, with the numbers."""
    counts = rep.annotated
    if not counts:
        detail = f"no usable video in {image_dir}: no video folder (<video>/<frame>.jpg) found"
        return problem("unusable", image_dir, detail, "check the path (image_directory/<video>/<frame>.jpg)")
    low, high = min(counts.values()), max(counts.values())
    shown = ", ".join(f"{v} {n}" for v, n in sorted(counts.items(), key=lambda kv: kv[1])[:MAX_LISTED])
    parts, fixes = [], []
    if rep.excluded_short:
        parts.append(
            f"{rep.excluded_short} have fewer annotated frames than seq_length={seq_length} (annotated frames per "
            f"video: {low}-{high}; {shown})"
        )
        fixes.append(
            "annotate more frames per video (a training clip is seq_length annotated frames; frames without a "
            "mask are not trained on) or lower main_training.seq_length"
        )
    if rep.excluded_untracked:
        named = ", ".join(sorted(rep.partial)[:MAX_LISTED]) or "-"
        parts.append(
            f"{rep.excluded_untracked} have no object labelled in two annotated frames (partial labels in: {named})"
        )
        fixes.append("label every object in every annotated frame where it is visible")
    detail = f"no usable video in {image_dir}: {len(counts)} videos; " + "; ".join(parts)
    return problem("unusable", image_dir, detail, "; or ".join(fixes) or "check the path")


def scan_video_dataset(
    name: str,
    cfg: Mapping,
    data_root: str,
    seq_length: int,
    read_files: bool = True,
    cache_root: str | None = None,
) -> tuple[VideoSet | None, DatasetReport]:
    """Index one video dataset (DAVIS layout: image_directory/<video>/*.jpg, mask_directory/<video>/*.png).

    read_files=False skips the file check (structure only), except for a dataset with partial_labels or
    wrong_size_masks=skip, whose frames depend on the files (checked through the cache); cache_root holds the
    file check's cache."""
    image_dir = resolve(data_root, cfg["image_directory"])
    mask_dir = resolve(data_root, cfg["mask_directory"])
    rep = DatasetReport(name=name, kind="video", path=image_dir, found=os.path.isdir(image_dir))
    key = f"data.vos_datasets.{name}"
    names = _video_folders(rep, image_dir, mask_dir, cfg, data_root, key)
    if names is None:
        return None, rep
    partial_labels = bool(cfg.get("partial_labels", False))
    skip_wrong_size = cfg.get("wrong_size_masks", "error") == "skip"
    empty_lists = _empty_lists(rep, name, cfg.get("empty_masks"), f"{key}.empty_masks")
    rep.issues += _conversion_problems(image_dir, names)
    structured = _structures(rep, image_dir, mask_dir, names)
    videos = _long_enough(rep, structured, seq_length)
    if read_files or partial_labels or skip_wrong_size:
        check_key = f"video|{image_dir}|{mask_dir}"
        short = [v for v in structured if len(v.stems) < seq_length]
        videos = _sound_videos(
            rep, videos, cache_root, check_key, ids=partial_labels, skip_wrong_size=skip_wrong_size, short=short
        )
        videos = _long_enough(rep, videos, seq_length)  # skipped masks may leave a video short
    if partial_labels:
        videos = _trackable(rep, videos)
    if rep.excluded_short:
        log.info("%s: %d videos shorter than the clip length %d are excluded", rep.name, rep.excluded_short, seq_length)
    rep.videos = len(videos)
    steps = _count_annotation(rep, videos)
    if not videos and not rep.issues:
        rep.issues.append(_unusable(rep, image_dir, seq_length))
    return _video_set(name, cfg, (image_dir, mask_dir), videos, empty_lists, steps), rep


def val_paths(cfg: Mapping, data_root: str) -> tuple[str, str, str | None] | None:
    """The validation set's frame folder, mask folder and subset file (None: no subset) under data_root, or None
    when one of them is absent: an absent set is skipped by training with a log line, not a problem."""
    subset = resolve(data_root, cfg["subset"]) if cfg.get("subset") else None
    paths = (resolve(data_root, cfg["image_directory"]), resolve(data_root, cfg["mask_directory"]), subset)
    return paths if all(os.path.exists(p) for p in paths if p is not None) else None


def scan_val_dataset(cfg: Mapping, data_root: str, cache_root: str | None = None) -> DatasetReport:
    """The validation set (data.val_dataset) checked as a training video set is (folders, pairing, every file,
    masks against their frames), and its unannotated frames too, which inference reads; no clip-length rule.
    Checked when training starts, so that a bad file cannot stop the run at its first validation."""
    key = "data.val_dataset"
    image_dir, mask_dir = resolve(data_root, cfg["image_directory"]), resolve(data_root, cfg["mask_directory"])
    rep = DatasetReport(name=cfg["name"], kind="video", path=image_dir, found=os.path.isdir(image_dir))
    names = _video_folders(rep, image_dir, mask_dir, cfg, data_root, key)
    if names is None:
        return rep
    videos = _structures(rep, image_dir, mask_dir, names)
    tasks = [t for v in videos for jp, pp in v.paths() for t in ((jp, "jpeg"), (pp, "png"))]
    unannotated = []  # the JPEGs without a mask: not in the pairs, but inference reads them
    for v in videos:
        annotated = set(v.jpgs)
        unannotated += [os.path.join(v.image_dir, f) for f in v.images if f not in annotated]
    # Its own cache key: a cache is rewritten with the entries of one check, and training's check of the same
    # folders (DAVIS train and val share them) would otherwise evict these and the other way round.
    results = _check(rep, tasks + [(p, "jpeg") for p in unannotated], cache_root, f"val|{image_dir}|{mask_dir}")
    sound = []
    for v in videos:
        found, _ = _video_file_problems(v, results)
        rep.issues += found
        sound += [] if found else [v]
    rep.videos = len(sound)
    _count_annotation(rep, sound)  # dense / sparse, for check_data's annotation lines
    rep.issues += [_file_problem(p, r) for p in unannotated if isinstance(r := results[p], FileError)]
    if not videos and not rep.issues:
        detail = f"no video with frames and masks in {image_dir} / {mask_dir}"
        rep.issues.append(problem("unusable", image_dir, detail, f"fix {key} or set {key}=null"))
    return rep


# ----------------------------------------------------------------------------------------------- static sets


def _static_folders(rep: DatasetReport, directory: str, structure: int, key: str) -> list[str] | None:
    if not rep.found:
        fix = f"link the dataset under data_root or set {key}.directory"
        rep.issues.append(problem("missing", directory, f"directory {directory} does not exist", fix))
        return None
    if structure not in (0, 1):
        detail = f"{key}.data_structure must be 0 (class/N.jpg) or 1 (flat NAME.jpg), not {structure}"
        rep.issues.append(problem("config", directory, detail, f"set {key}.data_structure"))
        return None
    if structure == 1:
        return [directory]
    subdirs = (os.path.join(directory, d) for d in os.listdir(directory))
    return sorted(d for d in subdirs if os.path.isdir(d))


def _static_pairs(rep: DatasetReport, folders: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for folder in folders:
        names = os.listdir(folder)
        images = _split_by_ext(names, IMAGE_EXTS)
        masks = _split_by_ext(names, (MASK_EXT,))
        rep.frames += len(images)
        rep.masks += len(masks)
        for stem in sorted(images):
            jp = os.path.join(folder, images[stem])
            if stem in masks:
                pairs.append((jp, os.path.join(folder, masks[stem])))
            else:
                rep.issues.append(problem("lonely_image", jp))
    return pairs


def _pair_problems(jp: str, pp: str, results: Mapping[str, FileResult]) -> list[Problem]:
    """A static pair: both files sound and of one size (any mask mode: it is thresholded to 0/1)."""
    ji, pi = results[jp], results[pp]
    out = [_file_problem(p, r) for p, r in ((jp, ji), (pp, pi)) if isinstance(r, FileError)]
    if isinstance(ji, FileInfo) and isinstance(pi, FileInfo) and ji.size != pi.size:
        out.append(
            problem("size_mismatch", pp, f"mask {_wh(pi.size)}, its image {os.path.basename(jp)} is {_wh(ji.size)}")
        )
    return out


def _sound_pairs(
    rep: DatasetReport, pairs: list[tuple[str, str]], cache_root: str | None, key: str
) -> list[tuple[str, str]]:
    results = _check(rep, [t for jp, pp in pairs for t in ((jp, "jpeg"), (pp, "png"))], cache_root, key)
    sound = []
    for jp, pp in pairs:
        found = _pair_problems(jp, pp, results)
        rep.issues += found
        if not found:
            sound.append((jp, pp))
    return sound


def scan_static_dataset(
    name: str, cfg: Mapping, data_root: str, read_files: bool = True, cache_root: str | None = None
) -> tuple[StaticSet | None, DatasetReport]:
    """Index one static dataset: data_structure 0 = class/N.jpg + N.png (FSS), 1 = flat NAME.jpg + NAME.png."""
    directory = resolve(data_root, cfg["directory"])
    structure = int(cfg.get("data_structure", 1))
    rep = DatasetReport(name=name, kind="static", path=directory, found=os.path.isdir(directory))
    key = f"data.image_datasets.{name}"
    folders = _static_folders(rep, directory, structure, key)
    if folders is None:
        return None, rep
    pairs = _static_pairs(rep, folders)
    if read_files:
        pairs = _sound_pairs(rep, pairs, cache_root, f"static|{directory}")
    if not pairs and not rep.issues:
        expected = "class/N.jpg + class/N.png" if structure == 0 else "NAME.jpg + NAME.png"
        rep.issues.append(
            problem("unusable", directory, f"no image/mask pair in {directory}", f"check the path; expected {expected}")
        )
    return StaticSet(name, directory, int(cfg.get("multiplier", 1)), pairs), rep

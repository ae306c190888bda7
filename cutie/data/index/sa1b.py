"""SA-1B as a static pre-training source: each `sa_N.jpg` + `sa_N.json` gives one sample per mask above a threshold.

Layout: `directory` holds the release's files either flat (a tar extracted in place) or one folder level down (each
tar extracted into its own folder, `sa_000000/`, `sa_000001/`, ...); deeper folders are not searched. Every
`*.json` there is an image's annotation file (`{"image": {"file_name", "width", "height", ...}, "annotations":
[{"segmentation": {"size": [h, w], "counts": "<compressed RLE>"}, "predicted_iou", "stability_score", ...}]}`).
Its `image.file_name` must be a plain file name in the JSON's own folder (confined: no path parts, no symlink out).

A sample is one (image, annotation) whose decoded mask covers at least `min_area_fraction` of the image (the area is
measured from the RLE runs, not taken from the file's `area`) and whose `predicted_iou` / `stability_score` reach
their minimums (0 = no filter); `max_masks_per_image` then keeps the largest of an image's masks that passed.
docs/sa1b.md explains the defaults.

Every annotation file is untrusted and checked in full at start-up: types of every value used, the RLE size equal to
the image size, the runs adding up to height x width (pycocotools silently pads or cuts them), and the JPEG's
own header size equal to the JSON's (through the frame check, cutie/data/index/frame_check.py). A bad file is one
Problem naming the file and the JSON location (`annotations[3].segmentation.size: ...`; a key repeated within an
object too: `annotations[3].segmentation: duplicate key 'counts'`). Results of good JSON files
(their kept annotation indices) are cached beside the frame check's (cutie/data/index/stamped_cache.py), keyed on
(path, size, mtime_ns) and the filter, so a second scan of an unchanged release parses no JSON.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial

import numpy as np

from cutie.config.train import Sa1bMasks
from cutie.config.typed import ConfigError, parse
from cutie.data.index import frame_check
from cutie.data.index.problems import DatasetReport, problem
from cutie.data.index.scan import IMAGE_EXTS, resolve
from cutie.data.index.stamped_cache import Keeper, StampedCache, cache_path, split
from cutie.utils import strict_json
from cutie.utils.image_files import MAX_PIXELS, FileError, FileInfo, unreadable
from cutie.utils.paths import Confiner, PathEscapeError
from cutie.utils.rle import RLEError, compressed_counts
from cutie.utils.stop_signals import quiet_pool_worker

log = logging.getLogger(__name__)

STRUCTURE = "sa1b"  # the data_structure value of an SA-1B set in datasets.yaml
JSON_EXT = ".json"
MAX_JSON_BYTES = 256 << 20  # a bigger annotation file is refused (real ones are a few MB)
CACHE_VERSION = 2  # 2: files with a repeated JSON key are refused (one cached as good before is parsed again)
INLINE_BELOW = 64  # fewer JSON files than this are parsed in-process
_FIX_JSON = "re-extract the image's tar (the detail names the JSON location), or delete the JSON and its JPEG"
_FIX_SIZE = "re-extract the image and its JSON from the same SA-1B tar"


class Sa1bError(ValueError):
    """An annotation file that cannot be used; the message starts with the JSON location."""


@dataclass(frozen=True)
class Sa1bFile:
    """What the index keeps of one good annotation file."""

    image: str  # file name of the JPEG, in the JSON's folder
    width: int
    height: int
    masks: int  # annotations in the file
    kept: tuple[int, ...]  # indices of the annotations that pass the filter


@dataclass
class Sa1bSet:
    """One SA-1B folder: its images and, per sample, (image, annotation index in that image's JSON)."""

    name: str
    directory: str
    multiplier: int
    images: list[str]  # JPEG paths
    annotations: list[str]  # the JSON path of each image, same order
    sample_image: np.ndarray  # S int32: index into images
    sample_mask: np.ndarray  # S int32: index into that JSON's `annotations`

    def __len__(self) -> int:
        return len(self.sample_image)

    def sample(self, k: int) -> tuple[str, str, int]:
        """(JPEG path, JSON path, annotation index) of sample k."""
        i = int(self.sample_image[k])
        return self.images[i], self.annotations[i], int(self.sample_mask[k])


# ----------------------------------------------------------------------------------------------- one annotation


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    if _is_int(v):
        return abs(v) < 1 << 53  # type: ignore[arg-type]  # JSON allows any size; float() of a huge one raises
    return isinstance(v, float) and math.isfinite(v)


def _show(v: object) -> str:
    text = json.dumps(v) if isinstance(v, str | int | float | bool | type(None)) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def image_size(doc: object) -> tuple[int, int]:
    """(width, height) of an annotation document's `image`; raises Sa1bError."""
    if not isinstance(doc, dict):
        raise Sa1bError(f"top level: expected an object with 'image' and 'annotations', got {_show(doc)}")
    image = doc.get("image")
    if not isinstance(image, dict):
        raise Sa1bError(f"image: expected an object, got {_show(image)}")
    for key in ("width", "height"):
        if not (_is_int(image.get(key)) and image[key] > 0):
            raise Sa1bError(f"image.{key}: must be a positive integer, got {_show(image.get(key))}")
    if image["width"] * image["height"] > MAX_PIXELS:
        raise Sa1bError(f"image: {image['width']}x{image['height']} is too large to be an image")
    return image["width"], image["height"]


def mask_runs(ann: object, where: str, width: int, height: int) -> np.ndarray:
    """The run lengths (int64, background first) of one annotation's compressed RLE, checked against the image
    size; raises Sa1bError starting with `where` (its JSON location)."""
    if not isinstance(ann, dict):
        raise Sa1bError(f"{where}: expected an object, got {_show(ann)}")
    seg = ann.get("segmentation")
    if not isinstance(seg, dict):
        raise Sa1bError(f"{where}.segmentation: expected an RLE object {{size, counts}}, got {_show(seg)}")
    size = seg.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise Sa1bError(f"{where}.segmentation.size: must be [height, width] integers, got {_show(size)}")
    if size != [height, width]:
        raise Sa1bError(f"{where}.segmentation.size: {size} differs from the image size [{height}, {width}]")
    counts = seg.get("counts")
    if not isinstance(counts, str):
        raise Sa1bError(f"{where}.segmentation.counts: must be a compressed RLE string, got {_show(counts)}")
    try:
        runs = compressed_counts(counts)
    except RLEError as e:
        raise Sa1bError(f"{where}.segmentation.counts: {e}") from None
    if runs.size and runs.min() < 0:
        raise Sa1bError(f"{where}.segmentation.counts: a negative run length")
    if int(runs.sum()) != width * height:
        raise Sa1bError(
            f"{where}.segmentation.counts: the runs cover {int(runs.sum())} pixels, the image has "
            f"{height}x{width} = {width * height}"
        )
    return runs


def _score(ann: dict, key: str, where: str, minimum: float) -> float:
    """A mask's score (predicted_iou, stability_score): a finite number when present, required when filtered on."""
    if key not in ann:
        if minimum > 0:
            raise Sa1bError(f"{where}.{key}: missing, but the filter needs it (set its minimum to 0)")
        return math.inf
    if not _is_number(ann[key]):
        raise Sa1bError(f"{where}.{key}: must be a number, got {_show(ann[key])}")
    return float(ann[key])


def _image_name(doc: dict) -> str:
    name = doc["image"].get("file_name")
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
        raise Sa1bError(f"image.file_name: must be a plain file name in the JSON's folder, got {_show(name)}")
    if os.path.splitext(name)[1].lower() not in IMAGE_EXTS:
        raise Sa1bError(f"image.file_name: {_show(name)} is not a JPEG name (.jpg, .jpeg)")
    return name


def select(doc: object, masks: Sa1bMasks) -> Sa1bFile:
    """Check a parsed annotation document in full and pick the annotations that become samples."""
    width, height = image_size(doc)
    assert isinstance(doc, dict)  # image_size raised otherwise
    name = _image_name(doc)
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        raise Sa1bError(f"annotations: expected a list, got {_show(anns)}")
    need = masks.min_area_fraction * width * height
    kept: list[tuple[int, int]] = []  # (area, index) of the annotations that pass
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        area = int(mask_runs(ann, where, width, height)[1::2].sum())  # odd runs are the mask's pixels
        iou = _score(ann, "predicted_iou", where, masks.min_predicted_iou)
        stability = _score(ann, "stability_score", where, masks.min_stability_score)
        if area > 0 and area >= need and iou >= masks.min_predicted_iou and stability >= masks.min_stability_score:
            kept.append((area, i))
    if masks.max_masks_per_image is not None:  # the largest ones; equal areas: the earlier annotation
        kept = sorted(kept, key=lambda a: (-a[0], a[1]))[: masks.max_masks_per_image]
    return Sa1bFile(name, width, height, len(anns), tuple(sorted(i for _, i in kept)))


def read_document(path: str) -> object:
    """An annotation file parsed as JSON; raises OSError (unreadable) or Sa1bError (not JSON, too large)."""
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise Sa1bError(f"top level: the file is larger than {MAX_JSON_BYTES >> 20} MB")
    try:
        return strict_json.loads(data)
    except strict_json.DuplicateKeyError as e:  # json.loads would keep the last value without a word
        raise Sa1bError(str(e)) from None
    except (ValueError, RecursionError) as e:
        raise Sa1bError(f"top level: not valid JSON ({str(e)[:80]})") from None


def parse_file(path: str, masks: Sa1bMasks) -> Sa1bFile | FileError:
    """One annotation file checked and filtered, or the problem with it (kind + detail)."""
    try:
        return select(read_document(path), masks)
    except OSError as e:
        return unreadable(e)
    except Sa1bError as e:
        return FileError("bad_annotation_file", str(e))


def _parse_task(task: tuple[str, Sa1bMasks]) -> tuple[str, Sa1bFile | FileError]:
    return task[0], parse_file(*task)


# ----------------------------------------------------------------------------------------------- cache


def _cache_key(directory: str, masks: Sa1bMasks) -> str:
    filters = (masks.min_area_fraction, masks.min_predicted_iou, masks.min_stability_score, masks.max_masks_per_image)
    return f"sa1b|{directory}|" + "|".join(map(repr, filters))


def _parse_file(payload: list) -> Sa1bFile | None:
    """A cached Sa1bFile from its untrusted JSON form [image name, width, height, masks, kept indices]."""
    if len(payload) != 5:
        return None
    name, w, h, n, kept = payload
    ints = all(_is_int(x) and x >= 0 for x in (w, h, n))
    if not ints or not isinstance(name, str) or not isinstance(kept, list):
        return None
    if not all(_is_int(k) and 0 <= k < n for k in kept):
        return None
    return Sa1bFile(name, w, h, n, tuple(kept))


def _encode_file(f: Sa1bFile) -> list:
    return [f.image, f.width, f.height, f.masks, list(f.kept)]


def _cache(cache_root: str, key: str) -> StampedCache[Sa1bFile]:
    """The annotation cache of `key`: `sa1b-<hash>.json` beside the frame check's caches (index/stamped_cache.py)."""
    return StampedCache(cache_path(cache_root, "sa1b-", key), key, CACHE_VERSION, _parse_file, _encode_file)


def parse_files(
    paths: Sequence[str], masks: Sa1bMasks, cache_root: str | None, key: str
) -> tuple[dict[str, Sa1bFile | FileError], int, list[str]]:
    """Every annotation file checked (in parallel, from the cache where unchanged): (results, files parsed, notes)."""
    cache = None if cache_root is None else _cache(cache_root, key)
    cached, note = cache.load() if cache is not None else ({}, None)
    notes = [note] if note else []
    plan = split(((p, masks) for p in paths), cached)
    results: dict[str, Sa1bFile | FileError] = {p: unreadable(e) for p, e in plan.unreadable.items()}
    results.update((p, f) for p, (_, f) in plan.hits.items())
    todo = plan.todo
    with Keeper(cache, plan.hits, dirty=len(plan.hits) != len(cached)) as keep, closing(_parse_all(todo)) as done:
        for p, result in done:
            results[p] = result
            if isinstance(result, Sa1bFile):
                keep.add(p, plan.entry(p, result))
    return results, len(todo), notes + keep.notes


def _parse_all(todo: Sequence[tuple[str, Sa1bMasks]]) -> Iterator[tuple[str, Sa1bFile | FileError]]:
    if len(todo) < INLINE_BELOW:
        yield from map(_parse_task, todo)
        return
    log.info("parsing %d SA-1B annotation files", len(todo))
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, len(todo) // 16)
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(max(1, workers), initializer=partial(quiet_pool_worker, os.getpid())) as pool:
        yield from pool.imap_unordered(_parse_task, todo, chunksize=16)


# ----------------------------------------------------------------------------------------------- the folder


def masks_of(cfg: Mapping, key: str) -> Sa1bMasks:
    """The mask filter of a dataset entry (typed; defaults where the entry gives none). Raises ConfigError."""
    return parse(Sa1bMasks, cfg.get("sa1b") or {}, f"{key}.sa1b")


def _folders(directory: str) -> list[str]:
    """The directory itself and its immediate subfolders (one per extracted tar), sorted."""
    subdirs = (os.path.join(directory, d) for d in sorted(os.listdir(directory)))
    return [directory, *(d for d in subdirs if os.path.isdir(d))]


@dataclass
class _Image:
    jpg: str
    json: str
    file: Sa1bFile


def _images(rep: DatasetReport, folders: list[str], masks: Sa1bMasks, cache_root: str | None, key: str) -> list[_Image]:
    """Pair each annotation file with the JPEG it names; report bad files and JPEGs that no file names."""
    listed: dict[str, list[str]] = {}
    jsons: list[str] = []
    for folder in folders:
        names = sorted(os.listdir(folder))
        listed[folder] = [n for n in names if os.path.splitext(n)[1].lower() in IMAGE_EXTS]
        jsons += [os.path.join(folder, n) for n in names if n.endswith(JSON_EXT) and not n.startswith(".")]
        rep.frames += len(listed[folder])
    results, parsed, notes = parse_files(jsons, masks, cache_root, key)
    rep.notes += notes
    if parsed:
        log.info("%s: %d annotation files parsed (%d from the cache)", rep.name, parsed, len(jsons) - parsed)
    out, named, bad = [], set(), set()  # bad: <folder>/<stem> of reported JSONs (their JPEG is not reported too)

    def refuse(path: str, kind: str, detail: str) -> None:
        rep.issues.append(problem(kind, path, detail, _FIX_JSON if kind == "bad_annotation_file" else None))
        bad.add(os.path.splitext(path)[0])

    for path in jsons:
        result = results[path]
        if isinstance(result, FileError):
            refuse(path, result.kind, result.detail)
            continue
        folder = os.path.dirname(path)
        jpg = os.path.join(folder, result.image)
        try:
            Confiner(folder)(result.image, what="image.file_name")
        except PathEscapeError as e:
            refuse(path, "bad_annotation_file", str(e))
            continue
        if result.image not in listed[folder]:
            refuse(path, "bad_annotation_file", f"image.file_name: {result.image} does not exist in {folder}")
        elif jpg in named:
            refuse(path, "bad_annotation_file", f"image.file_name: {result.image} is named by another JSON file too")
        else:
            named.add(jpg)
            out.append(_Image(jpg, path, result))
    for folder, names in listed.items():
        paths = (os.path.join(folder, n) for n in names)
        rep.issues += [
            problem("unannotated_image", p) for p in paths if p not in named and os.path.splitext(p)[0] not in bad
        ]
    return out


def _sound_images(rep: DatasetReport, images: list[_Image], cache_root: str | None, directory: str) -> list[_Image]:
    """Every named JPEG through the frame check, and its header size equal to its JSON's."""
    tasks = [(im.jpg, "jpeg") for im in images]
    results, stats = frame_check.check_files(tasks, cache_root, f"sa1b-jpeg|{directory}", desc=f"check {rep.name}")
    rep.checked = stats
    rep.notes += stats.notes
    sound = []
    for im in images:
        info = results[im.jpg]
        if isinstance(info, FileError):
            rep.issues.append(problem(info.kind, im.jpg, info.detail))
        elif isinstance(info, FileInfo) and info.size != (im.file.width, im.file.height):
            said = f"{os.path.basename(im.json)} says {im.file.width}x{im.file.height}"
            detail = f"{said}, the JPEG is {info.width}x{info.height}"
            rep.issues.append(problem("size_mismatch", im.jpg, detail, _FIX_SIZE))
        else:
            sound.append(im)
    return sound


def scan_sa1b_dataset(
    name: str, cfg: Mapping, data_root: str, read_files: bool = True, cache_root: str | None = None
) -> tuple[Sa1bSet | None, DatasetReport]:
    """Index one SA-1B folder (see the module docstring). read_files=False skips the JPEG check; the annotation
    files are always read (they decide the samples), from the cache under cache_root where unchanged."""
    directory = resolve(data_root, cfg["directory"])
    key = f"data.image_datasets.{name}"
    rep = DatasetReport(name=name, kind="static", path=directory, found=os.path.isdir(directory))
    if not rep.found:
        fix = f"extract the SA-1B tars under data_root or set {key}.directory"
        rep.issues.append(problem("missing", directory, f"directory {directory} does not exist", fix))
        return None, rep
    try:
        masks = masks_of(cfg, key)
    except ConfigError as e:
        rep.issues.append(problem("config", directory, str(e), f"set {key}.sa1b"))
        return None, rep
    images = _images(rep, _folders(directory), masks, cache_root, _cache_key(directory, masks))
    if read_files:
        images = _sound_images(rep, images, cache_root, directory)
    sample_image = [np.full(len(im.file.kept), i, np.int32) for i, im in enumerate(images)]
    sample_mask = [np.asarray(im.file.kept, np.int32) for im in images]
    sset = Sa1bSet(
        name=name,
        directory=directory,
        multiplier=int(cfg.get("multiplier", 1)),
        images=[im.jpg for im in images],
        annotations=[im.json for im in images],
        sample_image=np.concatenate(sample_image) if images else np.zeros(0, np.int32),
        sample_mask=np.concatenate(sample_mask) if images else np.zeros(0, np.int32),
    )
    rep.masks = len(sset)
    total = sum(im.file.masks for im in images)
    without = sum(1 for im in images if not im.file.kept)
    rep.notes.append(
        f"{len(sset)} of {total} masks kept as samples (area >= {masks.min_area_fraction:g} of the image, "
        f"predicted_iou >= {masks.min_predicted_iou:g}, stability_score >= {masks.min_stability_score:g}"
        f"{'' if masks.max_masks_per_image is None else f', the {masks.max_masks_per_image} largest per image'}); "
        f"{without} of {len(images)} images have none"
    )
    if not len(sset) and not rep.issues:
        detail = f"no SA-1B mask passes the filter in {directory}"
        fix = f"check the path (sa_N.jpg + sa_N.json, flat or one folder down) or lower {key}.sa1b.min_area_fraction"
        rep.issues.append(problem("unusable", directory, detail, fix))
    return sset, rep

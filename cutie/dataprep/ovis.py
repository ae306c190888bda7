"""OVIS (YouTube-VIS style annotations_train.json + frames) -> DAVIS-style training videos (OVIS-VOS-train).

Per video (named by the folder of its file_names, e.g. `2fb5a55b`):
- JPEGImages/<video>/<stem>.jpg: every frame of file_names, copied byte for byte.
- Annotations/<video>/<stem>.png: palette PNG, one id per instance; frames without instances are all zero.
- _meta/<video>.json: completion marker and `id_map` {annotation id: pixel value}.

Instance ids: the video's annotations sorted by annotation id get 1, 2, ... (at most 255 per video). A
segmentation may be a compressed RLE dict, an uncompressed RLE dict, a polygon list, or null (absent in that
frame). Overlaps: instances are painted in id order, so the later (higher annotation id) one wins.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from cutie.dataprep.convert import (
    FIX_EMPTY,
    InputError,
    Job,
    Problems,
    Summary,
    check_folders,
    check_frame_path,
    check_source_frame,
    component_problem,
    copy_output,
    fingerprint,
    is_int,
    is_positive_int,
    run_jobs,
    show,
    write_output,
)
from cutie.dataprep.imageio import encode_palette_png
from cutie.dataprep.rle import check_segmentation, decode
from cutie.utils.paths import Confiner

VERSION = 1
MAX_INSTANCES = 255  # a PNG pixel holds 0..255, 0 = background


def video_name(video: dict) -> str:
    return str(PurePosixPath(video["file_names"][0]).parent)


def _is_id(value: object) -> bool:
    return is_int(value) or isinstance(value, str)


def _check_video(v: object, where: str, frames: Confiner, problems: Problems) -> bool:
    """Checks one entry of `videos`; True if it is usable (its annotations can then be checked against it)."""
    if not isinstance(v, dict):
        problems.append(f"{where}: must be an object, got {show(v)}")
        return False
    missing = [k for k in ("id", "file_names", "width", "height") if k not in v]
    if missing:
        problems.append(f"{where}: missing key(s) {', '.join(missing)}")
        return False
    ok = True
    if not _is_id(v["id"]):
        problems.append(f"{where}.id: must be an integer or a string, got {show(v['id'])}")
        ok = False
    for key in ("width", "height"):
        if not is_positive_int(v[key]):
            problems.append(f"{where}.{key}: must be a positive integer, got {show(v[key])}")
            ok = False
    files = v["file_names"]
    if not isinstance(files, list) or not files:
        problems.append(f"{where}.file_names: must be a non-empty list of frame paths, got {show(files)}")
        return False
    paths_ok = [check_frame_path(frames, f, f"{where}.file_names[{k}]", problems) for k, f in enumerate(files)]
    if not all(paths_ok):
        return False
    name = video_name(v)
    if (why := component_problem(name)) is not None:
        problems.path(f"{where}.file_names[0]: the video folder {why}; file names must be '<video>/<frame>'")
        return False
    folders = {str(PurePosixPath(f).parent) for f in files}
    if len(folders) > 1:
        problems.append(f"{where}.file_names: span several folders ({', '.join(sorted(folders)[:3])})")
        ok = False
    stems: set[str] = set()
    for k, f in enumerate(files):
        stem = PurePosixPath(f).stem
        if stem in stems:
            problems.append(f"{where}.file_names[{k}]: video {name} (id {v['id']}): frame {f} is listed twice")
            ok = False
        stems.add(stem)
        if (why := component_problem(PurePosixPath(f).name)) is not None:
            problems.append(f"{where}.file_names[{k}]: frame file name {why}")
            ok = False
    if "length" in v and v["length"] != len(files):
        problems.append(f"{where}.length: must equal the number of file_names ({len(files)}), got {show(v['length'])}")
        ok = False
    return ok


def validate(doc: object, frames_path: Path) -> None:
    """Raise InputError listing every problem of an OVIS annotation document, each with its JSON location."""
    problems = Problems()
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), list):
        problems.append("top level: expected an object with 'videos' and 'annotations' lists")
    elif not isinstance(doc.get("annotations"), list):
        problems.append("annotations: missing, or not a list")
    problems.raise_if_any("OVIS json")
    assert isinstance(doc, dict)  # for the type checker: raise_if_any raised otherwise
    if not doc["videos"]:  # converting nothing with exit 0 would leave the user with an empty dataset
        raise InputError(["videos: the list is empty, nothing to convert"], "OVIS json", (FIX_EMPTY,))
    frames = Confiner(frames_path)
    videos: dict[object, dict] = {}
    broken: set[object] = set()  # ids of videos already reported: their annotations are not checked against them
    names: dict[str, int] = {}
    for i, v in enumerate(doc["videos"]):
        where = f"videos[{i}]"
        if not _check_video(v, where, frames, problems):
            if isinstance(v, dict) and _is_id(v.get("id")):
                broken.add(v["id"])
            continue
        name = video_name(v)
        if v["id"] in videos:
            problems.append(f"{where}.id: video id {show(v['id'])} used twice")
        if name in names:
            problems.append(f"{where}.file_names: video folder {name!r} is also used by videos[{names[name]}]")
        videos.setdefault(v["id"], v)
        names.setdefault(name, i)
    ann_ids: set[object] = set()
    per_video: dict[object, int] = {}
    for j, a in enumerate(doc["annotations"]):
        where = f"annotations[{j}]"
        if not isinstance(a, dict):
            problems.append(f"{where}: must be an object, got {show(a)}")
            continue
        missing = [k for k in ("id", "video_id", "segmentations") if k not in a]
        if missing:
            problems.append(f"{where}: missing key(s) {', '.join(missing)}")
            continue
        if not _is_id(a["id"]) or not _is_id(a["video_id"]):
            key = "id" if not _is_id(a["id"]) else "video_id"
            problems.append(f"{where}.{key}: must be an integer or a string, got {show(a[key])}")
            continue
        if a["id"] in ann_ids:
            problems.append(f"{where}.id: annotation {a['id']}: annotation id used twice")
        ann_ids.add(a["id"])
        v = videos.get(a["video_id"])
        if v is None and a["video_id"] in broken:
            continue
        if v is None:
            problems.append(f"{where}.video_id: annotation {a['id']}: video_id {a['video_id']} is not in 'videos'")
            continue
        per_video[v["id"]] = per_video.get(v["id"], 0) + 1
        if per_video[v["id"]] == MAX_INSTANCES + 1:
            problems.append(f"{where}: video {video_name(v)} has more than {MAX_INSTANCES} instances (PNG limit)")
        context = f"video {video_name(v)}, annotation {a['id']}"
        segs = a["segmentations"]
        if not isinstance(segs, list) or len(segs) != len(v["file_names"]):
            n = len(segs) if isinstance(segs, list) else "no"
            problems.append(f"{where}.segmentations: {context}: {n} segmentations for {len(v['file_names'])} frames")
            continue
        for t, (f, seg) in enumerate(zip(v["file_names"], segs, strict=True)):
            try:
                check_segmentation(seg, v["height"], v["width"])
            except ValueError as e:  # RLEError, and anything else a malformed value raises
                problems.append(f"{where}.segmentations[{t}]: {context}, frame {f}: {e}")
    problems.raise_if_any("OVIS json")


def make_jobs(doc: dict, frames_path: Path) -> list[Job]:
    by_video: dict[object, list[dict]] = {}
    for a in doc["annotations"]:
        by_video.setdefault(a["video_id"], []).append(a)
    jobs = []
    for v in doc["videos"]:
        # integer ids in numeric order (then string ids): mixed types must not make sorted() raise
        anns = sorted(by_video.get(v["id"], []), key=lambda a: (isinstance(a["id"], str), a["id"]))
        entry = {"video": v, "segmentations": [[a["id"], a["segmentations"]] for a in anns]}
        jobs.append(
            Job(video_name(v), fingerprint(entry, {}, VERSION), {"entry": entry, "frames_path": str(frames_path)})
        )
    return jobs


def _frames(job: Job) -> list[Path]:
    """The video's frame files, confined to frames_path again (the folder may have changed since validation)."""
    src = Confiner(job.payload["frames_path"])
    return [src(f, what="frame") for f in job.payload["entry"]["video"]["file_names"]]


def check_inputs(job: Job) -> None:
    """Raises naming the first missing or unusable frame (before the video's old output is cleared)."""
    v = job.payload["entry"]["video"]
    for p in _frames(job):
        check_source_frame(p, (v["height"], v["width"]))


def convert_video(output: Path, job: Job) -> tuple[int, int, dict]:
    """Write one video (see the module doc); its inputs were checked by `check_inputs`."""
    v, instances = job.payload["entry"]["video"], job.payload["entry"]["segmentations"]
    h, w = v["height"], v["width"]
    for t, (f, src) in enumerate(zip(v["file_names"], _frames(job), strict=True)):
        ids = np.zeros((h, w), dtype=np.uint8)  # H*W
        for k, (_, segs) in enumerate(instances, start=1):  # id order: the later instance wins on overlaps
            if segs[t] is not None:
                ids[decode(segs[t], h, w)] = k
        name = PurePosixPath(f)
        copy_output(output, output / "JPEGImages" / job.video / name.name, src)
        write_output(output, output / "Annotations" / job.video / f"{name.stem}.png", encode_palette_png(ids))
    info = {
        "source": {"video_id": v["id"]},
        "id_map": {str(ann_id): k for k, (ann_id, _) in enumerate(instances, start=1)},
        "frames": len(v["file_names"]),
    }
    return len(v["file_names"]), len(instances), info


def convert(doc: dict, frames_path: Path, output_path: Path, workers: int | None = None) -> Summary:
    """Validate the whole document and the folders, then convert every video not already done."""
    check_folders(frames_path, output_path)
    validate(doc, frames_path)
    jobs = make_jobs(doc, frames_path)
    return run_jobs(jobs, check_inputs, convert_video, output_path, workers, desc="OVIS")

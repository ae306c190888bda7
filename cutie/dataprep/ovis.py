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

from cutie.dataprep.convert import InputError, Job, Summary, fingerprint, run_jobs
from cutie.dataprep.imageio import encode_palette_png
from cutie.dataprep.rle import RLEError, check_segmentation, decode
from cutie.utils.atomic import atomic_copy, atomic_write_bytes

VERSION = 1


def video_name(video: dict) -> str:
    return str(PurePosixPath(video["file_names"][0]).parent)


def validate(doc: object) -> None:
    """Raise InputError listing every problem of an OVIS annotation document (names video and frame)."""
    problems: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("videos"), list):
        raise InputError(["top level: expected an object with 'videos' and 'annotations' lists"], "OVIS json")
    if not isinstance(doc.get("annotations"), list):
        raise InputError(["top level: missing the 'annotations' list"], "OVIS json")
    videos: dict[object, dict] = {}
    names: dict[str, object] = {}
    for i, v in enumerate(doc["videos"]):
        where = f"videos[{i}]"
        missing = [k for k in ("id", "file_names", "width", "height") if not isinstance(v, dict) or k not in v]
        if missing:
            problems.append(f"{where}: missing key(s) {', '.join(missing)}")
            continue
        if not v["file_names"]:
            problems.append(f"{where} (id {v['id']}): empty file_names")
            continue
        name = video_name(v)
        where = f"video {name} (id {v['id']})"
        if v["id"] in videos:
            problems.append(f"{where}: video id {v['id']} used twice")
        if name in names or name in ("", ".") or name.startswith(".."):
            problems.append(f"{where}: folder name {name!r} is empty or used by another video")
        folders = {str(PurePosixPath(f).parent) for f in v["file_names"]}
        if len(folders) > 1:
            problems.append(f"{where}: file_names span several folders ({', '.join(sorted(folders)[:3])})")
        stems: set[str] = set()
        for f in v["file_names"]:
            if PurePosixPath(f).stem in stems:
                problems.append(f"{where}: frame {f} is listed twice")
            stems.add(PurePosixPath(f).stem)
        if "length" in v and v["length"] != len(v["file_names"]):
            problems.append(f"{where}: length {v['length']} but {len(v['file_names'])} file_names")
        videos[v["id"]] = v
        names[name] = v["id"]
    ann_ids: set[object] = set()
    for j, a in enumerate(doc["annotations"]):
        missing = [k for k in ("id", "video_id", "segmentations") if not isinstance(a, dict) or k not in a]
        if missing:
            problems.append(f"annotations[{j}]: missing key(s) {', '.join(missing)}")
            continue
        where = f"annotation {a['id']}"
        if a["id"] in ann_ids:
            problems.append(f"{where}: annotation id used twice")
        ann_ids.add(a["id"])
        v = videos.get(a["video_id"])
        if v is None:
            problems.append(f"{where}: video_id {a['video_id']} is not in 'videos'")
            continue
        where = f"video {video_name(v)}, {where}"
        segs = a["segmentations"]
        if not isinstance(segs, list) or len(segs) != len(v["file_names"]):
            n = len(segs) if isinstance(segs, list) else "no"
            problems.append(f"{where}: {n} segmentations for {len(v['file_names'])} frames")
            continue
        for f, seg in zip(v["file_names"], segs, strict=True):
            try:
                check_segmentation(seg, int(v["height"]), int(v["width"]))
            except RLEError as e:
                problems.append(f"{where}, frame {f}: {e}")
    if problems:
        raise InputError(problems, "OVIS json")


def make_jobs(doc: dict, frames_path: Path) -> list[Job]:
    by_video: dict[object, list[dict]] = {}
    for a in doc["annotations"]:
        by_video.setdefault(a["video_id"], []).append(a)
    jobs = []
    for v in doc["videos"]:
        anns = sorted(by_video.get(v["id"], []), key=lambda a: a["id"])
        entry = {"video": v, "segmentations": [[a["id"], a["segmentations"]] for a in anns]}
        jobs.append(
            Job(video_name(v), fingerprint(entry, {}, VERSION), {"entry": entry, "frames_path": str(frames_path)})
        )
    return jobs


def convert_video(output: Path, job: Job) -> tuple[int, int, dict]:
    """Write one video (see the module doc); raises FileNotFoundError naming a missing frame."""
    v, instances = job.payload["entry"]["video"], job.payload["entry"]["segmentations"]
    src = Path(job.payload["frames_path"])
    for f in v["file_names"]:
        if not (src / f).is_file():
            raise FileNotFoundError(f"frame file {src / f} does not exist")
    if len(instances) > 255:
        raise ValueError(f"{len(instances)} instances; a PNG mask holds at most 255")
    h, w = int(v["height"]), int(v["width"])
    for t, f in enumerate(v["file_names"]):
        ids = np.zeros((h, w), dtype=np.uint8)  # H*W
        for k, (_, segs) in enumerate(instances, start=1):  # id order: the later instance wins on overlaps
            if segs[t] is not None:
                ids[decode(segs[t], h, w)] = k
        atomic_copy(src / f, output / "JPEGImages" / job.video / PurePosixPath(f).name)
        atomic_write_bytes(output / "Annotations" / job.video / f"{PurePosixPath(f).stem}.png", encode_palette_png(ids))
    info = {
        "source": {"video_id": v["id"]},
        "id_map": {str(ann_id): k for k, (ann_id, _) in enumerate(instances, start=1)},
        "frames": len(v["file_names"]),
    }
    return len(v["file_names"]), len(instances), info


def convert(doc: dict, frames_path: Path, output_path: Path, workers: int | None = None) -> Summary:
    """Validate the whole document, then convert every video not already done."""
    validate(doc)
    return run_jobs(make_jobs(doc, frames_path), convert_video, output_path, workers, desc="OVIS")

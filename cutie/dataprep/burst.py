"""BURST (train.json + frames) -> DAVIS-style training videos (BURST/train-vos).

Per sequence, video name `<dataset>_-_<seq_name>`:
- JPEGImages/<video>/<stem>.jpg: the annotated frames, copied byte for byte (frame stems kept).
- Annotations/<video>/<stem>.png: palette PNG, pixel = track id; an annotated frame without tracks -> all zero.
- with save_all_image: JPEGImages_all_frames/<video>/ holds every frame of all_image_paths as well.
- _meta/<video>.json: completion marker and `id_map` {BURST track id: pixel value}.

Track ids: ids 1..255 are kept. Ids above 255 (a PNG pixel holds 0..255) are remapped per sequence to the
smallest ids no other track of that sequence uses, in order of first appearance; the map is in the marker.
Overlapping tracks: tracks are painted in their order within the frame's JSON dict, so the later one wins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cutie.dataprep.convert import InputError, Job, Summary, fingerprint, run_jobs
from cutie.dataprep.imageio import encode_palette_png
from cutie.dataprep.rle import RLEError, check_segmentation, decode
from cutie.utils.atomic import atomic_copy, atomic_write_bytes

VERSION = 1
REQUIRED = ("dataset", "seq_name", "width", "height", "annotated_image_paths", "segmentations")


def video_name(seq: dict) -> str:
    return f"{seq['dataset']}_-_{seq['seq_name']}"


def _stem(path: str) -> str:
    return Path(path).stem


def validate(doc: object, save_all_image: bool = False) -> None:
    """Raise InputError listing every problem of a BURST annotation document (names sequence and frame)."""
    problems: list[str] = []
    if not isinstance(doc, dict) or not isinstance(doc.get("sequences"), list):
        raise InputError(["top level: expected an object with a 'sequences' list"], "BURST json")
    seen_videos: dict[str, int] = {}
    for i, seq in enumerate(doc["sequences"]):
        where = f"sequences[{i}]"
        if not isinstance(seq, dict):
            problems.append(f"{where}: not an object")
            continue
        required = REQUIRED + (("all_image_paths",) if save_all_image else ())
        missing = [k for k in required if k not in seq]
        if "dataset" in seq and "seq_name" in seq:
            where = f"sequence {video_name(seq)} ({where})"
        if missing:
            problems.append(f"{where}: missing key(s) {', '.join(missing)}")
            continue
        name = video_name(seq)
        if "/" in name or "\\" in name or name.startswith("."):
            problems.append(f"{where}: dataset/seq_name give an unusable folder name {name!r}")
        if name in seen_videos:
            problems.append(f"{where}: same dataset and seq_name as sequences[{seen_videos[name]}]")
        seen_videos[name] = i
        h, w = seq["height"], seq["width"]
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            problems.append(f"{where}: width/height must be positive integers, got {w!r}x{h!r}")
            continue
        frames, segs = seq["annotated_image_paths"], seq["segmentations"]
        if not isinstance(frames, list) or not isinstance(segs, list) or len(frames) != len(segs):
            problems.append(f"{where}: annotated_image_paths and segmentations must be lists of equal length")
            continue
        for key in ("annotated_image_paths", "all_image_paths") if save_all_image else ("annotated_image_paths",):
            stems: dict[str, str] = {}
            for f in seq[key]:
                if _stem(f) in stems:
                    problems.append(f"{where}: frame {f} is listed twice in {key}")
                stems[_stem(f)] = f
        if save_all_image and not set(frames) <= set(seq["all_image_paths"]):
            extra = sorted(set(frames) - set(seq["all_image_paths"]))[0]
            problems.append(f"{where}: annotated frame {extra} is not in all_image_paths")
        for frame, seg in zip(frames, segs, strict=True):
            if not isinstance(seg, dict):
                problems.append(f"{where}, frame {frame}: segmentation must be a {{track id: {{'rle': ...}}}} dict")
                continue
            for track, ann in seg.items():
                if not str(track).isdigit() or int(track) < 1:
                    problems.append(f"{where}, frame {frame}: track id {track!r} is not a positive integer")
                    continue
                if not isinstance(ann, dict) or not isinstance(ann.get("rle"), str):
                    problems.append(f"{where}, frame {frame}, track {track}: missing 'rle' string")
                    continue
                try:
                    check_segmentation(ann["rle"], h, w)
                except RLEError as e:
                    problems.append(f"{where}, frame {frame}, track {track}: {e}")
    if problems:
        raise InputError(problems, "BURST json")


def id_map(seq: dict) -> dict[int, int]:
    """{track id: pixel value}: ids <= 255 kept, larger ones get free ids in order of first appearance."""
    tracks: list[int] = []  # order of first appearance
    for seg in seq["segmentations"]:
        for track in seg:
            if int(track) not in tracks:
                tracks.append(int(track))
    known = tracks + [int(t) for t in seq.get("track_category_ids", {}) if str(t).isdigit()]
    used = {t for t in known if t <= 255}
    free = iter(i for i in range(1, 256) if i not in used)
    mapping = {}
    for t in tracks:
        if t <= 255:
            mapping[t] = t
        else:
            new = next(free, None)
            if new is None:
                raise ValueError(f"more than 255 tracks in {video_name(seq)}; a PNG mask cannot hold them")
            mapping[t] = new
    return mapping


def make_jobs(doc: dict, frames_path: Path, save_all_image: bool) -> list[Job]:
    options = {"save_all_image": save_all_image}
    return [
        Job(
            video_name(seq),
            fingerprint(seq, options, VERSION),
            {"seq": seq, "frames_path": str(frames_path), "save_all_image": save_all_image},
        )
        for seq in doc["sequences"]
    ]


def convert_sequence(output: Path, job: Job) -> tuple[int, int, dict]:
    """Write one sequence (see the module doc); raises FileNotFoundError naming a missing frame."""
    seq, save_all = job.payload["seq"], job.payload["save_all_image"]
    src = Path(job.payload["frames_path"]) / seq["dataset"] / seq["seq_name"]
    needed = list(seq["annotated_image_paths"]) + (list(seq["all_image_paths"]) if save_all else [])
    for f in needed:  # fail before writing anything of this sequence
        if not (src / f).is_file():
            raise FileNotFoundError(f"frame file {src / f} does not exist")
    mapping = id_map(seq)
    h, w = seq["height"], seq["width"]
    for frame, seg in zip(seq["annotated_image_paths"], seq["segmentations"], strict=True):
        ids = np.zeros((h, w), dtype=np.uint8)  # H*W
        for track, ann in seg.items():  # JSON order: the later track wins where masks overlap
            ids[decode(ann["rle"], h, w)] = mapping[int(track)]
        atomic_copy(src / frame, output / "JPEGImages" / job.video / Path(frame).name)
        atomic_write_bytes(output / "Annotations" / job.video / f"{_stem(frame)}.png", encode_palette_png(ids))
    if save_all:
        for frame in seq["all_image_paths"]:
            atomic_copy(src / frame, output / "JPEGImages_all_frames" / job.video / Path(frame).name)
    info = {
        "source": {"dataset": seq["dataset"], "seq_name": seq["seq_name"], "id": seq.get("id")},
        "id_map": {str(k): v for k, v in mapping.items()},
        "frames": len(seq["annotated_image_paths"]),
    }
    return len(seq["annotated_image_paths"]), len(mapping), info


def convert(
    doc: dict, frames_path: Path, output_path: Path, save_all_image: bool = False, workers: int | None = None
) -> Summary:
    """Validate the whole document, then convert every sequence not already done."""
    validate(doc, save_all_image)
    jobs = make_jobs(doc, frames_path, save_all_image)
    return run_jobs(jobs, convert_sequence, output_path, workers, desc="BURST")

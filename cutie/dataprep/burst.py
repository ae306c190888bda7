"""BURST (train.json + frames) -> DAVIS-style training videos (BURST/train-vos).

Per sequence, video name `<dataset>_-_<seq_name>`:
- JPEGImages/<video>/<stem>.jpg: the annotated frames, copied byte for byte (frame stems kept).
- Annotations/<video>/<stem>.png: palette PNG, pixel = track id; an annotated frame without tracks -> all zero.
- with save_all_image: JPEGImages_all_frames/<video>/ holds every frame of all_image_paths as well.
- _meta/<video>.json: completion marker and `id_map` {BURST track id: pixel value}.
A sequence without annotated frames is left out (counted in the summary): it holds nothing to train on.

Track ids: ids 1..255 are kept. Ids above 255 (a PNG pixel holds 0..255) are remapped per sequence to the
smallest ids no other track of that sequence uses, in order of first appearance; the map is in the marker.
Overlapping tracks: tracks are painted in their order within the frame's JSON dict, so the later one wins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cutie.dataprep.convert import (
    FIX_EMPTY,
    InputError,
    Job,
    Problems,
    Summary,
    assign_pixel_ids,
    check_folders,
    check_frame_path,
    check_source_frame,
    component_problem,
    copy_output,
    fingerprint,
    is_digits,
    is_positive_int,
    run_jobs,
    show,
    write_output,
)
from cutie.dataprep.imageio import encode_palette_png
from cutie.dataprep.rle import check_segmentation, decode
from cutie.utils.paths import Confiner

VERSION = 1
REQUIRED = ("dataset", "seq_name", "width", "height", "annotated_image_paths", "segmentations")
MAX_TRACKS = 255  # a PNG pixel holds 0..255, 0 = background


def video_name(seq: dict) -> str:
    return f"{seq['dataset']}_-_{seq['seq_name']}"


def _stem(path: str) -> str:
    return Path(path).stem


def _check_frames(seq: dict, key: str, where: str, frames_path: Path, problems: Problems) -> bool:
    """Checks the frame list `seq[key]`: a list of paths inside the sequence's folder, no frame twice."""
    frames = seq[key]
    if not isinstance(frames, list):
        problems.append(f"{where}.{key}: must be a list of frame paths, got {show(frames)}")
        return False
    seq_dir = Confiner(frames_path / seq["dataset"] / seq["seq_name"])
    ok = True
    stems: set[str] = set()
    for k, f in enumerate(frames):
        if not check_frame_path(seq_dir, f, f"{where}.{key}[{k}]", problems):
            ok = False
            continue
        if _stem(f) in stems:
            problems.append(f"{where}.{key}[{k}]: frame {f} is listed twice in {key}")
            ok = False
        stems.add(_stem(f))
        if (why := component_problem(Path(f).name)) is not None:
            problems.append(f"{where}.{key}[{k}]: frame file name {why}")
            ok = False
    return ok


def _check_sequence(seq: dict, where: str, frames_path: Path, save_all_image: bool, problems: Problems) -> None:
    ok = True
    for key in ("dataset", "seq_name"):
        if (why := component_problem(seq[key])) is not None:
            # a string naming another folder is a path problem; a number or null is just a wrong value
            (problems.path if isinstance(seq[key], str) else problems.append)(f"{where}.{key}: {why}")
            ok = False
    if not ok:
        return  # the frame folder is unknown, so the frame paths cannot be checked
    folder = f"{seq['dataset']}/{seq['seq_name']}"
    if not check_frame_path(Confiner(frames_path), folder, f"{where}.dataset/seq_name", problems):
        return
    for key in ("width", "height"):
        if not is_positive_int(seq[key]):
            problems.append(f"{where}.{key}: must be a positive integer, got {show(seq[key])}")
            ok = False
    ok = _check_frames(seq, "annotated_image_paths", where, frames_path, problems) and ok
    if save_all_image:
        ok = _check_frames(seq, "all_image_paths", where, frames_path, problems) and ok
    if "track_category_ids" in seq and not isinstance(seq["track_category_ids"], dict):
        problems.append(f"{where}.track_category_ids: must be an object, got {show(seq['track_category_ids'])}")
        ok = False
    frames, segs = seq["annotated_image_paths"], seq["segmentations"]
    if not isinstance(segs, list):
        problems.append(f"{where}.segmentations: must be a list (one entry per annotated frame), got {show(segs)}")
        return
    if not ok:
        return  # sizes or frame lists are unusable: the segmentations cannot be checked against them
    if len(frames) != len(segs):
        problems.append(
            f"{where}.segmentations: {len(segs)} entries for {len(frames)} annotated_image_paths (must be equal)"
        )
        return
    if save_all_image and not set(frames) <= set(seq["all_image_paths"]):
        extra = sorted(set(frames) - set(seq["all_image_paths"]))[0]
        problems.append(f"{where}.annotated_image_paths: annotated frame {extra} is not in all_image_paths")
    h, w, name = seq["height"], seq["width"], video_name(seq)
    before = len(problems)
    for k, (frame, seg) in enumerate(zip(frames, segs, strict=True)):
        here = f"{where}.segmentations[{k}]"
        if not isinstance(seg, dict):
            problems.append(f"{here}: must be a {{track id: {{'rle': ...}}}} object (frame {frame}), got {show(seg)}")
            continue
        for track, ann in seg.items():
            if not is_digits(track) or int(track) < 1:
                problems.append(f"{here}: track id {track!r} is not a positive integer (frame {frame})")
                continue
            if not isinstance(ann, dict) or not isinstance(ann.get("rle"), str):
                problems.append(f"{here}[\"{track}\"]: missing the 'rle' string (frame {frame}, track {track})")
                continue
            try:
                check_segmentation(ann["rle"], h, w)
            except ValueError as e:  # RLEError, and anything else a malformed value raises
                problems.append(f'{here}["{track}"].rle: {e} (sequence {name}, frame {frame}, track {track})')
    if len(problems) == before:
        try:
            id_map(seq)  # too many tracks for a PNG: found now rather than half-way through the conversion
        except ValueError as e:
            problems.append(f"{where}.segmentations: {e}")


def validate(doc: object, frames_path: Path, save_all_image: bool = False) -> None:
    """Raise InputError listing every problem of a BURST annotation document, each with its JSON location."""
    problems = Problems()
    if not isinstance(doc, dict) or not isinstance(doc.get("sequences"), list):
        problems.append("top level: expected an object with a 'sequences' list")
        problems.raise_if_any("BURST json")
    assert isinstance(doc, dict)  # for the type checker: raise_if_any raised otherwise
    if not doc["sequences"]:  # converting nothing with exit 0 would leave the user with an empty dataset
        raise InputError(["sequences: the list is empty, nothing to convert"], "BURST json", (FIX_EMPTY,))
    seen_videos: dict[str, int] = {}
    required = REQUIRED + (("all_image_paths",) if save_all_image else ())
    for i, seq in enumerate(doc["sequences"]):
        where = f"sequences[{i}]"
        if not isinstance(seq, dict):
            problems.append(f"{where}: must be an object, got {show(seq)}")
            continue
        named = isinstance(seq.get("dataset"), str) and isinstance(seq.get("seq_name"), str)
        label = f"sequence {video_name(seq)} ({where})" if named else where
        missing = [k for k in required if k not in seq]
        if missing:
            problems.append(f"{label}: missing key(s) {', '.join(missing)}")
            continue
        _check_sequence(seq, where, frames_path, save_all_image, problems)
        if named:
            name = video_name(seq)
            if name in seen_videos:
                problems.append(f"{label}: same dataset and seq_name as sequences[{seen_videos[name]}]")
            seen_videos.setdefault(name, i)
    problems.raise_if_any("BURST json")


def id_map(seq: dict) -> dict[int, int]:
    """{track id: pixel value}: ids <= 255 kept, larger ones get free ids in order of first appearance."""
    tracks: list[int] = []  # order of first appearance
    for seg in seq["segmentations"]:
        for track in seg:
            if int(track) not in tracks:
                tracks.append(int(track))
    known = tracks + [int(t) for t in seq.get("track_category_ids", {}) if is_digits(t)]
    try:
        values = assign_pixel_ids(tracks, known)
    except ValueError:
        raise ValueError(f"more than {MAX_TRACKS} tracks in {video_name(seq)}; a PNG mask cannot hold them") from None
    return dict(zip(tracks, values, strict=True))


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


def _sequence_dir(job: Job) -> Confiner:
    seq = job.payload["seq"]
    folder = Confiner(job.payload["frames_path"])(f"{seq['dataset']}/{seq['seq_name']}", what="sequence folder")
    return Confiner(folder)


def _needed(job: Job) -> list[str]:
    seq = job.payload["seq"]
    return list(seq["annotated_image_paths"]) + (list(seq["all_image_paths"]) if job.payload["save_all_image"] else [])


def check_inputs(job: Job) -> None:
    """Raises naming the first missing or unusable frame (before the sequence's old output is cleared);
    the frames are confined again, as the folder may have changed since validation."""
    src, seq = _sequence_dir(job), job.payload["seq"]
    for f in _needed(job):
        check_source_frame(src(f, what="frame"), (seq["height"], seq["width"]))


def convert_sequence(output: Path, job: Job) -> tuple[int, int, dict]:
    """Write one sequence (see the module doc); its inputs were checked by `check_inputs`."""
    seq, save_all = job.payload["seq"], job.payload["save_all_image"]
    src = _sequence_dir(job)
    mapping = id_map(seq)
    h, w = seq["height"], seq["width"]
    for frame, seg in zip(seq["annotated_image_paths"], seq["segmentations"], strict=True):
        ids = np.zeros((h, w), dtype=np.uint8)  # H*W
        for track, ann in seg.items():  # JSON order: the later track wins where masks overlap
            ids[decode(ann["rle"], h, w)] = mapping[int(track)]
        copy_output(output, output / "JPEGImages" / job.video / Path(frame).name, src(frame, what="frame"))
        write_output(output, output / "Annotations" / job.video / f"{_stem(frame)}.png", encode_palette_png(ids))
    if save_all:
        for frame in seq["all_image_paths"]:
            dst = output / "JPEGImages_all_frames" / job.video / Path(frame).name
            copy_output(output, dst, src(frame, what="frame"))
    info = {
        "source": {"dataset": seq["dataset"], "seq_name": seq["seq_name"], "id": seq.get("id")},
        "id_map": {str(k): v for k, v in mapping.items()},
        "frames": len(seq["annotated_image_paths"]),
    }
    return len(seq["annotated_image_paths"]), len(mapping), info


def convert(
    doc: dict, frames_path: Path, output_path: Path, save_all_image: bool = False, workers: int | None = None
) -> Summary:
    """Validate the whole document and the folders, then convert every sequence not already done."""
    check_folders(frames_path, output_path)
    validate(doc, frames_path, save_all_image)
    jobs = make_jobs(doc, frames_path, save_all_image)
    # a sequence without annotated frames gives training nothing; converted, it left a completion record without
    # frames, which the data check reports as an unfinished conversion that no rerun could finish
    empty = [j.video for j in jobs if not j.payload["seq"]["annotated_image_paths"]]
    jobs = [j for j in jobs if j.payload["seq"]["annotated_image_paths"]]
    summary = run_jobs(jobs, check_inputs, convert_sequence, output_path, workers, desc="BURST")
    if empty:
        summary.notes.append(f"{len(empty)} sequence(s) without annotated frames left out (e.g. {empty[0]})")
    return summary

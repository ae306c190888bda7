"""SA-V training release (mp4 videos + masklet JSON) -> DAVIS-style training videos (SA-V/train-vos).

Input: --sav_path, searched recursively (the release unpacks into sav_000/, sav_001/, ...), holds
`<video>.mp4` (24 fps) with `<video>_manual.json` and, for most videos, `<video>_auto.json`. A JSON holds
`video_height`, `video_width`, `video_frame_count` (numbers), `masklet_id` (ints), `masklet_num` and `masklet`:
a list over the annotated frames (6 fps: video frames 0, 4, 8, ...) of lists over the masklets of COCO RLEs
`{"size": [h, w], "counts": str}`.

Per video (named by the mp4's stem, e.g. `sav_000001`):
- JPEGImages/<video>/<frame>.jpg: the annotated video frames, decoded by OpenCV reading the mp4 sequentially
  (seeking in an mp4 is not frame-exact), re-encoded as JPEG; <frame> is the index in the 24 fps video
  (00000, 00004, ...), so the loader's frame_interval is 4.
- Annotations/<video>/<frame>.png: palette PNG of masklet ids (see below); a frame without masks is all zero.
- _meta/<video>.json: completion marker and `id_map` {"manual"|"auto": {masklet id: pixel value}}. A rerun
  redoes a video whose JSONs changed (by content) or whose mp4 changed (by size or modification time).

Masklets: --masklets manual (default), auto, or both (manual ones first, then auto). The pixel value of a masklet
is its masklet_id + 1 (SA-V ids start at 0, which is background in a PNG); values above 255, and auto ids that
repeat a manual one, get the smallest free values in masklet order (as the BURST converter does).

Overlaps: SA-V masklets overlap (a person and, separately, their hand). Each pixel gets the SMALLEST masklet that
covers it (by its area in that frame; equal areas: the earlier masklet), so parts stay visible over wholes.

Checks: every JSON is validated before anything is written (exit 2, each problem named by file and JSON
location): no key repeated within an object, types, RLE sizes equal to the video size, one RLE per masklet per
frame, and no more annotated frames than the video has (frame 4k must exist). While decoding, the mp4's frame
size and frame count must equal the JSON's; a video that does not is reported as failed (no marker) and the
others go on. The rest (resumable, atomic, confined to --output_path, summary, exit codes) is the shared flow of
cutie/dataprep/convert.py.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cutie.dataprep.convert import (
    INTERRUPTED,
    ForkSafeBar,
    InputError,
    Job,
    Problems,
    Summary,
    assign_pixel_ids,
    check_folders,
    component_problem,
    fingerprint,
    is_int,
    run_jobs,
    show,
    write_output,
)
from cutie.dataprep.imageio import encode_jpeg, encode_palette_png
from cutie.dataprep.rle import check_segmentation, decode
from cutie.utils import strict_json
from cutie.utils.paths import Confiner, PathEscapeError, is_inside

VERSION = 1
ANNOTATION_STEP = 4  # SA-V is annotated at 6 fps, the videos are 24 fps
KINDS = {"manual": ("manual",), "auto": ("auto",), "both": ("manual", "auto")}
REQUIRED = ("video_height", "video_width", "video_frame_count", "masklet", "masklet_id", "masklet_num")
# a damaged or partial download is the usual cause; the video's JSON is made for the release's own mp4
FIX_VIDEO = "fix: re-download or re-extract the mp4 (and its JSONs) from the release, then rerun"
FIX_NO_VIDEO = "fix: point --sav_path at the unpacked training release (the folder of sav_000/, sav_001/, ...)"
FIX_LINKS = "fix: copy or mount the linked folders inside --sav_path, or point --sav_path at the folder they hold"
FIX_FILES = "fix: every <video>.mp4 needs its <video>_manual.json beside it (re-download or re-extract the release)"


@dataclass(frozen=True)
class Source:
    """One video of the release: its mp4 and the annotation files the chosen --masklets reads."""

    video: str
    mp4: str  # relative to --sav_path
    jsons: dict[str, str]  # kind -> path relative to --sav_path


def _whole_number(value: object) -> int | None:
    """A JSON size as an int (SA-V stores them as float64, e.g. 720.0), or None if not a positive whole number."""
    if is_int(value) and value > 0:  # type: ignore[operator]
        return int(value)  # type: ignore[arg-type]
    if isinstance(value, float) and math.isfinite(value) and value > 0 and value.is_integer():
        return int(value)
    return None


def discover(sav_path: Path, masklets: str) -> tuple[list[Source], list[str]]:
    """Every video below `sav_path` (links leading out of it are refused). Returns the sources and the videos
    left out because they have no annotation of the chosen kind (auto only: a few SA-V videos have none)."""
    problems = Problems()
    root = Confiner(sav_path)
    found: dict[str, str] = {}
    files: set[str] = set()
    for here, dirs, names in os.walk(sav_path):  # does not descend into linked folders
        dirs.sort()
        for d in dirs:  # a linked folder would otherwise be skipped without a word (its videos missing)
            link = Path(here, d)
            if link.is_symlink() and not is_inside(sav_path, link):
                rel = link.relative_to(sav_path).as_posix()
                problems.path(f"{rel}: a symlink to a folder outside --sav_path ({os.readlink(link)}); not searched")
        for name in sorted(names):
            rel = Path(here, name).relative_to(sav_path).as_posix()
            files.add(rel)
            if not name.endswith(".mp4"):
                continue
            video = name[: -len(".mp4")]
            if (why := component_problem(video)) is not None:
                problems.path(f"{rel}: video name {why}")
            elif video in found:
                problems.append(f"{rel}: video {video} also exists as {found[video]} (names must be unique)")
            else:
                found[video] = rel
    sources, left_out = [], []
    for video, mp4 in sorted(found.items()):
        jsons = {}
        for kind in ("manual", "auto"):
            rel = (Path(mp4).parent / f"{video}_{kind}.json").as_posix()
            if rel in files:
                jsons[kind] = rel
        if "manual" not in jsons and masklets != "auto":
            problems.append(f"{mp4}: no {video}_manual.json beside it")
            continue
        wanted = {k: jsons[k] for k in KINDS[masklets] if k in jsons}
        if not wanted:
            left_out.append(video)
            continue
        for rel in (mp4, *wanted.values()):
            try:
                root(rel, what="file")
            except PathEscapeError as e:
                problems.path(str(e))
                continue
            if not (sav_path / rel).is_file():  # a dangling link: named now, not as a bare error mid-run
                problems.append(f"{rel}: a broken link or not a regular file (re-download or re-extract it)")
        sources.append(Source(video, mp4, wanted))
    mp4s = {Path(m).with_suffix("").as_posix() for m in found.values()}
    for rel in sorted(files):
        for kind in ("manual", "auto"):
            if rel.endswith(f"_{kind}.json") and rel[: -len(f"_{kind}.json")] not in mp4s:
                problems.append(f"{rel}: no {Path(rel).name[: -len(f'_{kind}.json')]}.mp4 beside it")
    if not found and not problems:  # a wrong --sav_path (or the tars not yet extracted) must not "succeed"
        raise InputError(["no <video>.mp4 found in it or its subfolders"], f"--sav_path {sav_path}", (FIX_NO_VIDEO,))
    if problems:
        fixes = ((FIX_LINKS,) if problems.paths else ()) + (FIX_FILES,)
        raise InputError(list(problems), f"--sav_path {sav_path}", fixes)
    return sources, left_out


def validate_doc(doc: object, source: str, video: str, problems: Problems) -> dict | None:
    """Checks one masklet JSON; records each problem as `<file>: <JSON location>: ...`. Returns
    {height, width, frame_count, annotated, ids} when the document is usable."""
    if not isinstance(doc, dict):
        problems.append(f"{source}: top level: expected an object, got {show(doc)}")
        return None
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        problems.append(f"{source}: missing key(s) {', '.join(missing)}")
        return None
    ok = True
    if "video_id" in doc and doc["video_id"] != video:
        problems.append(f"{source}: video_id: {show(doc['video_id'])} differs from the file name's {video!r}")
    sizes = {}
    for key in ("video_height", "video_width", "video_frame_count"):
        sizes[key] = _whole_number(doc[key])
        if sizes[key] is None:
            problems.append(f"{source}: {key}: must be a positive whole number, got {show(doc[key])}")
            ok = False
    ids, num = doc["masklet_id"], doc["masklet_num"]
    if not isinstance(ids, list) or not all(is_int(i) and i >= 0 for i in ids):
        problems.append(f"{source}: masklet_id: must be a list of non-negative integers, got {show(ids)}")
        ok = False
    elif len(set(ids)) != len(ids):
        problems.append(f"{source}: masklet_id: ids repeat ({show(ids)})")
        ok = False
    if not is_int(num) or num < 0:
        problems.append(f"{source}: masklet_num: must be a non-negative integer, got {show(num)}")
        ok = False
    elif isinstance(ids, list) and len(ids) != num:
        problems.append(f"{source}: masklet_num: {num}, but masklet_id lists {len(ids)} id(s)")
        ok = False
    masklet = doc["masklet"]
    if not isinstance(masklet, list) or not masklet:
        problems.append(f"{source}: masklet: must be a non-empty list over annotated frames, got {show(masklet)}")
        return None
    if not ok:
        return None
    h, w, count = sizes["video_height"], sizes["video_width"], sizes["video_frame_count"]
    assert h is not None and w is not None and count is not None
    most = -(-count // ANNOTATION_STEP)  # frames 0, 4, ... that exist in a video of `count` frames
    if len(masklet) > most:
        problems.append(
            f"{source}: masklet: {len(masklet)} annotated frames, but a video of video_frame_count {count} has "
            f"only {most} (every {ANNOTATION_STEP}th frame)"
        )
        return None
    before = len(problems)
    for t, frame in enumerate(masklet):
        here = f"masklet[{t}]"
        if not isinstance(frame, list) or len(frame) != num:
            problems.append(f"{source}: {here}: must be a list of {num} RLE(s) (one per masklet), got {show(frame)}")
            continue
        for k, rle in enumerate(frame):
            if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str):
                problems.append(f'{source}: {here}[{k}]: must be {{"size": [h, w], "counts": str}}, got {show(rle)}')
                continue
            try:
                check_segmentation(rle, h, w)
            except ValueError as e:
                problems.append(f"{source}: {here}[{k}]: {e} (masklet_id {ids[k]})")
        if len(problems) - before > 20:
            break  # one broken file should not flood the report
    if len(problems) != before:
        return None
    return {"height": h, "width": w, "frame_count": count, "annotated": len(masklet), "ids": list(ids)}


def _read_json(path: Path) -> tuple[bytes, object]:
    data = path.read_bytes()
    return data, strict_json.loads(data.decode("utf-8"))


def _plan(info: dict[str, dict]) -> dict:
    """What a video's output is made of: its size, annotated frames, and each masklet's pixel value."""
    first = next(iter(info.values()))
    wanted = [(kind, i) for kind, d in info.items() for i in d["ids"]]
    values = assign_pixel_ids([i + 1 for _, i in wanted])
    id_map: dict[str, dict[str, int]] = {kind: {} for kind in info}
    for (kind, i), v in zip(wanted, values, strict=True):
        id_map[kind][str(i)] = v
    return {
        "height": first["height"],
        "width": first["width"],
        "frame_count": first["frame_count"],
        "annotated": max(d["annotated"] for d in info.values()),
        "id_map": id_map,
    }


def validate(sav_path: Path, sources: list[Source], masklets: str) -> list[Job]:
    """Reads and checks every JSON (InputError listing all problems), and makes one job per video. Only hashes
    and paths are kept: the JSONs of the full release do not fit in memory together."""
    problems = Problems()
    jobs = []
    # reading the release's JSONs takes minutes (and is redone on every rerun): show it, with an ETA
    for src in ForkSafeBar(sources, desc="SA-V json", unit="video", file=sys.stderr, dynamic_ncols=True):
        info, hashes = {}, {}
        for kind, rel in src.jsons.items():
            try:
                data, doc = _read_json(sav_path / rel)
            except strict_json.DuplicateKeyError as e:
                problems += [f"{rel}: {p}" for p in e.problems]
                continue
            except (OSError, ValueError, RecursionError) as e:
                problems.append(f"{rel}: cannot read: {e}")
                continue
            hashes[kind] = hashlib.sha1(data).hexdigest()
            checked = validate_doc(doc, rel, src.video, problems)
            if checked is not None:
                info[kind] = checked
        if len(info) != len(src.jsons):
            continue
        if len({(d["height"], d["width"], d["frame_count"]) for d in info.values()}) > 1:
            problems.append(f"{src.video}: the manual and auto JSONs differ in video size or frame count")
            continue
        try:
            plan = _plan(info)
        except ValueError as e:
            problems.append(f"{src.video}: masklet_id: {e}")
            continue
        options = {"masklets": masklets}
        # the mp4 by size and mtime_ns, as make judges a file: a re-encoded or re-downloaded copy of the same size
        # is redone. Hashing it instead would read the whole release (hundreds of GB) on every rerun.
        st = (sav_path / src.mp4).stat()
        entry = {"jsons": hashes, "mp4": src.mp4, "mp4_bytes": st.st_size, "mp4_mtime_ns": st.st_mtime_ns}
        payload = {"sav_path": str(sav_path), "source": src, "hashes": hashes, "plan": plan}
        jobs.append(Job(src.video, fingerprint(entry, options, VERSION), payload))
    problems.raise_if_any("SA-V json")
    return jobs


def check_inputs(job: Job) -> None:
    """Before the video's old output is cleared: its files exist, stay inside --sav_path and are unchanged."""
    root, src = Confiner(job.payload["sav_path"]), job.payload["source"]
    if not root(src.mp4, what="video").is_file():
        raise FileNotFoundError(f"video file {root.root / src.mp4} does not exist")
    for kind, rel in src.jsons.items():
        if hashlib.sha1(root(rel, what="annotation").read_bytes()).hexdigest() != job.payload["hashes"][kind]:
            raise ValueError(f"{root.root / rel} changed since it was checked; rerun")


def paint(masks: list[np.ndarray], values: list[int], height: int, width: int) -> np.ndarray:
    """The index mask where each pixel holds the value of the smallest mask covering it (ties: the earlier)."""
    ids = np.zeros((height, width), dtype=np.uint8)
    order = sorted(range(len(masks)), key=lambda k: (int(np.count_nonzero(masks[k])), k))
    for k in reversed(order):  # largest first, so smaller ones are painted over it
        np.copyto(ids, values[k], where=masks[k])  # faster than boolean-index assignment
    return ids


def _frame_masks(job: Job) -> list[tuple[list[dict | None], list[int]]]:
    """Per annotated frame: the RLEs of every masklet (None past the end of a shorter JSON) and their values."""
    root, src, plan = Confiner(job.payload["sav_path"]), job.payload["source"], job.payload["plan"]
    rles: list[list[dict | None]] = [[] for _ in range(plan["annotated"])]
    values: list[int] = []
    for kind, rel in src.jsons.items():
        data, doc = _read_json(root(rel, what="annotation"))
        if hashlib.sha1(data).hexdigest() != job.payload["hashes"][kind]:
            raise ValueError(f"{root.root / rel} changed since it was checked; rerun")
        assert isinstance(doc, dict)
        values += [plan["id_map"][kind][str(i)] for i in doc["masklet_id"]]
        for t in range(plan["annotated"]):
            rles[t] += doc["masklet"][t] if t < len(doc["masklet"]) else [None] * doc["masklet_num"]
    return [(frame, values) for frame in rles]


def convert_video(output: Path, job: Job) -> tuple[int, int, dict]:
    """Decode the mp4 sequentially and write every annotated frame and its index mask (see the module doc)."""
    src, plan = job.payload["source"], job.payload["plan"]
    h, w = plan["height"], plan["width"]
    frames = _frame_masks(job)
    mp4 = Confiner(job.payload["sav_path"])(src.mp4, what="video")
    cap = cv2.VideoCapture(str(mp4))
    if not cap.isOpened():
        raise ValueError(f"{mp4}: OpenCV cannot open the video ({FIX_VIDEO})")
    count = 0
    try:
        while True:
            annotated = count % ANNOTATION_STEP == 0 and count // ANNOTATION_STEP < len(frames)
            if annotated:  # decode and convert only the frames kept; grab() still advances the decoder
                ok, bgr = cap.read()
            else:
                ok, bgr = cap.grab(), None
            if not ok:
                break
            if annotated:
                assert bgr is not None
                if bgr.shape[:2] != (h, w):
                    raise ValueError(
                        f"{mp4}: frames are {bgr.shape[1]}x{bgr.shape[0]}, the JSON says {w}x{h} ({FIX_VIDEO})"
                    )
                rles, values = frames[count // ANNOTATION_STEP]
                masks = [decode(r, h, w) for r in rles]
                stem = f"{count:05d}"
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # the same pixels as bgr[..., ::-1], without a slow copy
                write_output(output, output / "JPEGImages" / job.video / f"{stem}.jpg", encode_jpeg(rgb))
                ids = paint(masks, values, h, w)
                write_output(output, output / "Annotations" / job.video / f"{stem}.png", encode_palette_png(ids))
            count += 1
    finally:
        cap.release()
    if count != plan["frame_count"]:
        raise ValueError(
            f"{mp4}: the video has {count} frames, the JSON's video_frame_count is {plan['frame_count']} ({FIX_VIDEO})"
        )
    info = {
        "source": {"mp4": src.mp4, "json": src.jsons},
        "id_map": plan["id_map"],
        "frames": len(frames),
        "video_frame_count": count,
    }
    return len(frames), sum(len(m) for m in plan["id_map"].values()), info


def convert(sav_path: Path, output_path: Path, masklets: str = "manual", workers: int | None = None) -> Summary:
    """Find and validate every video, then convert every one not already done."""
    check_folders(sav_path, output_path)
    sources, _ = discover(sav_path, masklets)
    jobs = validate(sav_path, sources, masklets)
    return run_jobs(jobs, check_inputs, convert_video, output_path, workers, desc="SA-V")


def run_cli(sav_path: Path, output_path: Path, masklets: str, workers: int | None) -> int:
    """Exit code 0 when every video converted, 1 when some failed (or the run could not go on), 2 for bad
    input or an unsafe output folder (nothing written)."""
    if masklets not in KINDS:
        print(f"error: --masklets must be one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    if not sav_path.is_dir():
        print(f"error: --sav_path {sav_path} is not a folder", file=sys.stderr)
        return 2
    try:
        check_folders(sav_path, output_path)
        sources, left_out = discover(sav_path, masklets)
        if left_out:
            print(f"note: {len(left_out)} video(s) have no _{masklets}.json and are left out (e.g. {left_out[0]})")
        jobs = validate(sav_path, sources, masklets)
        summary = run_jobs(jobs, check_inputs, convert_video, output_path, workers, desc="SA-V")
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0

"""SA-V (mp4 + masklet JSON) -> train-vos: smallest-masklet masks, decoded frames, resumability, input errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _helpers import file_tree as _tree
from _helpers import folder_state, repeat_key
from PIL import Image
from pycocotools import mask as mask_utils

from cutie.dataprep.convert import assign_pixel_ids
from cutie.dataprep.imageio import encode_jpeg
from cutie.utils.atomic import TEMP_SUFFIX
from cutie.utils.palette import davis_palette

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
REPO = Path(__file__).resolve().parents[1]


def _cli(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "convert_sav_to_vos.py"), "--sav_path", str(src),
           "--output_path", str(out), *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def sav_src(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the raw tiny SA-V release (tests modify it)."""
    dst = tmp_path_factory.mktemp("sav") / "sav_train"
    shutil.copytree(tiny_data / "SA-V" / "sav_train", dst)
    return dst


@pytest.fixture(scope="module")
def converted(sav_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sav_out") / "train-vos"
    r = _cli(sav_src, out, "--masklets", "both", "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 converted" in r.stdout
    return out


def _smallest_wins(masks: list[np.ndarray], values: list[int]) -> np.ndarray:
    """The documented rule, computed independently: per pixel the covering mask of least (area, order)."""
    stack = np.stack(masks)  # N*H*W
    n = len(masks)
    keys = np.array([int(m.sum()) * n + k for k, m in enumerate(masks)], dtype=np.int64)
    ranked = np.where(stack, keys[:, None, None], np.iinfo(np.int64).max)
    winner = ranked.argmin(axis=0)
    return np.where(stack.any(axis=0), np.asarray(values, np.uint8)[winner], 0).astype(np.uint8)


def _docs(src: Path, video: str) -> list[dict]:
    folder = next(p.parent for p in src.rglob(f"{video}.mp4"))
    return [json.loads(p.read_text()) for k in ("manual", "auto") if (p := folder / f"{video}_{k}.json").is_file()]


def test_masks_equal_pycocotools_with_smallest_masklet_rule(sav_src: Path, converted: Path) -> None:
    palette = davis_palette()
    overlaps = late = 0
    for mp4 in sorted(sav_src.rglob("*.mp4")):
        video = mp4.stem
        docs = _docs(sav_src, video)
        id_map = json.loads((converted / "_meta" / f"{video}.json").read_text())["id_map"]
        kinds = ["manual", "auto"][: len(docs)]
        values = [id_map[k][str(i)] for k, d in zip(kinds, docs, strict=True) for i in d["masklet_id"]]
        assert len(set(values)) == len(values)  # manual and auto ids (both from 0) got distinct pixel values
        h, w = int(docs[0]["video_height"]), int(docs[0]["video_width"])
        stems = []
        for t in range(len(docs[0]["masklet"])):
            rles = [r for d in docs for r in d["masklet"][t]]
            masks = [mask_utils.decode({"size": r["size"], "counts": r["counts"].encode()}).astype(bool) for r in rles]
            with Image.open(converted / "Annotations" / video / f"{4 * t:05d}.png") as png:
                assert png.mode == "P" and png.getpalette()[:48] == palette[:48]
                got = np.array(png)
            assert got.shape == (h, w) and np.array_equal(got, _smallest_wins(masks, values)), f"{video} {4 * t}"
            overlaps += int((np.sum(masks, axis=0) > 1).sum())
            late += sum(not m.any() for m in masks)
            stems.append(f"{4 * t:05d}")
        assert sorted(p.stem for p in (converted / "Annotations" / video).iterdir()) == stems
        assert sorted(p.stem for p in (converted / "JPEGImages" / video).iterdir()) == stems
    assert overlaps > 0 and late > 0  # the edge cases were exercised


def test_part_stays_visible_over_its_whole(sav_src: Path, converted: Path) -> None:
    doc = _docs(sav_src, "sav_000001")[0]  # masklet 2 is the top half of masklet 0
    rle = doc["masklet"][0][2]
    part = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    got = np.array(Image.open(converted / "Annotations" / "sav_000001" / "00000.png"))
    # frame 0: the late blob is absent; the auto copy of the part (4) ties with it and loses to the earlier one (3)
    assert part.any() and set(np.unique(got[part])) == {3}


def test_frames_equal_opencv_decode(sav_src: Path, converted: Path) -> None:
    for mp4 in sorted(sav_src.rglob("*.mp4")):
        cap = cv2.VideoCapture(str(mp4))
        t = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if t % 4 == 0:
                path = converted / "JPEGImages" / mp4.stem / f"{t:05d}.jpg"
                jpg = np.array(Image.open(path).convert("RGB"))
                diff = np.abs(jpg.astype(np.int16) - bgr[:, :, ::-1].astype(np.int16))
                # JPEG tolerance (quality 90 on a noisy texture), and exactly this frame's encoding
                assert diff.mean() < 6 and np.percentile(diff, 99) < 40, f"{mp4.stem} frame {t}"
                assert path.read_bytes() == encode_jpeg(bgr[:, :, ::-1]), f"{mp4.stem} frame {t}"
            t += 1
        cap.release()
        assert t == int(_docs(sav_src, mp4.stem)[0]["video_frame_count"])


def test_rerun_is_a_no_op(sav_src: Path, converted: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in converted.rglob("*") if p.is_file()}
    r = _cli(sav_src, converted, "--masklets", "both")
    assert r.returncode == 0 and "0 converted, 2 already done" in r.stdout, r.stdout + r.stderr
    assert {p: p.stat().st_mtime_ns for p in converted.rglob("*") if p.is_file()} == before


def test_an_mp4_replaced_by_one_of_the_same_size_is_converted_again(sav_src: Path, tmp_path: Path) -> None:
    # the fingerprint held the mp4's byte size only: a fixed copy of the same size left the old frames in place
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(sav_src, src)
    assert _cli(src, out).returncode == 0
    mp4 = next(src.rglob("sav_001002.mp4"))
    size, mtime = mp4.stat().st_size, mp4.stat().st_mtime_ns
    os.utime(mp4, ns=(mtime + 10**9, mtime + 10**9))  # as a replacement copied over it leaves it
    assert mp4.stat().st_size == size
    r = _cli(src, out)
    assert r.returncode == 0 and "1 converted, 1 already done" in r.stdout, r.stdout + r.stderr
    r = _cli(src, out)  # and done once: the next rerun skips it again
    assert r.returncode == 0 and "0 converted, 2 already done" in r.stdout, r.stdout + r.stderr


def _first_frames_only(mp4: Path, n: int) -> None:
    """Replace `mp4` by a re-encoding of its first `n` frames (a cut video that OpenCV opens and decodes)."""
    cap = cv2.VideoCapture(str(mp4))
    frames = [f for ok, f in iter(cap.read, (False, None)) if ok][:n]
    cap.release()
    h, w = frames[0].shape[:2]
    tmp = mp4.with_name("cut.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 24, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    tmp.replace(mp4)


@pytest.mark.parametrize("how", ["truncated", "short"])
def test_a_damaged_new_mp4_keeps_the_earlier_output(sav_src: Path, converted: Path, tmp_path: Path, how) -> None:
    # the old output was cleared before the new mp4 was decoded: a damaged replacement left nothing
    src, out = tmp_path / "src", tmp_path / "out"
    shutil.copytree(sav_src, src)
    shutil.copytree(converted, out)
    before = folder_state(out)
    mp4 = next(src.rglob("sav_001002.mp4"))
    if how == "truncated":  # an interrupted re-download: OpenCV cannot open it
        mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
        words = "OpenCV cannot open the video"
    else:  # decodes, but ends early: frames 0 and 4 were written before the frame count is found wrong
        _first_frames_only(mp4, 5)
        words = "the video has 5 frames, the JSON's video_frame_count is 9"
    r = _cli(src, out, "--masklets", "both", "--workers", "1")
    assert r.returncode == 1 and "0 converted, 1 already done, 1 failed" in r.stdout, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("FAILED sav_001002"))
    assert "sav_001/sav_001002.mp4" in line and words in line and "fix: re-download" in line, line
    assert folder_state(out) == before  # frames, masks and marker byte for byte, and nothing left beside them


def test_interrupted_run_then_rerun_gives_identical_bytes(sav_src: Path, converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    reference = _tree(converted)
    # As a kill leaves things: no marker, a half-written mask, a stray temporary file.
    (out / "_meta" / "sav_000001.json").unlink()
    png = out / "Annotations" / "sav_000001" / "00004.png"
    png.write_bytes(png.read_bytes()[:20])
    (out / "JPEGImages" / "sav_000001" / f".00008.jpg.abc{TEMP_SUFFIX}").write_bytes(b"partial")
    staged = out / ".staging" / "sav_000001" / "JPEGImages" / "sav_000001"  # a video killed while it was written
    staged.mkdir(parents=True)
    (staged / "00000.jpg").write_bytes(b"partial")
    r = _cli(sav_src, out, "--masklets", "both")
    assert r.returncode == 0 and "1 converted, 1 already done" in r.stdout, r.stdout + r.stderr
    assert _tree(out) == reference


def test_ids_above_255_are_remapped(sav_src: Path, tmp_path: Path) -> None:
    assert assign_pixel_ids([1, 300, 2, 1]) == [1, 3, 2, 4]  # kept, then the smallest free values in order
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    path = next(src.rglob("sav_001002_manual.json"))
    doc = json.loads(path.read_text())
    doc["masklet_id"] = [299, 3]  # pixel values 300 (too large for a PNG) and 4
    path.write_text(json.dumps(doc))
    r = _cli(src, tmp_path / "out", "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((tmp_path / "out" / "_meta" / "sav_001002.json").read_text())
    assert meta["id_map"] == {"manual": {"299": 1, "3": 4}}
    masks = [np.array(Image.open(p)) for p in sorted((tmp_path / "out" / "Annotations" / "sav_001002").iterdir())]
    assert set(np.unique(np.stack(masks))) == {0, 1, 4}


def _break(doc: dict, how: str) -> str:
    if how == "height_type":
        doc["video_height"] = "48"
        return 'video_height: must be a positive whole number, got "48"'
    if how == "rle_size":
        doc["masklet"][1][0]["size"] = [doc["masklet"][1][0]["size"][0] + 2, doc["masklet"][1][0]["size"][1]]
        return "masklet[1][0]: RLE size"
    if how == "too_many_frames":
        doc["masklet"].append(doc["masklet"][-1])
        return "masklet: 5 annotated frames, but a video of video_frame_count 14 has only 4"
    if how == "masklet_count":
        doc["masklet"][2] = doc["masklet"][2][:1]
        return "masklet[2]: must be a list of 3 RLE(s)"
    if how == "masklet_num":
        doc["masklet_num"] = 2
        return "masklet_num: 2, but masklet_id lists 3 id(s)"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["height_type", "rle_size", "too_many_frames", "masklet_count", "masklet_num"])
def test_bad_json_values_exit_2_naming_the_field(sav_src: Path, tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    path = next(src.rglob("sav_000001_manual.json"))
    doc = json.loads(path.read_text())
    message = _break(doc, how)
    path.write_text(json.dumps(doc))
    r = _cli(src, tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sav_000/sav_000001_manual.json: " + message in r.stderr and "nothing was written" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_repeated_key_in_a_masklet_json_exits_2_naming_where(sav_src: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    path = next(src.rglob("sav_000001_manual.json"))
    doc = json.loads(path.read_text())
    rle = doc["masklet"][1][0]
    path.write_text(repeat_key(doc, rle, "counts", rle["counts"]))  # json.loads kept the last without a word
    r = _cli(src, tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sav_000/sav_000001_manual.json: masklet[1][0]: duplicate key 'counts'" in r.stderr
    assert "nothing was written" in r.stderr and not (tmp_path / "out").exists()


def test_missing_annotation_file_exits_2(sav_src: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    next(src.rglob("sav_001002_manual.json")).unlink()
    r = _cli(src, tmp_path / "out")
    assert r.returncode == 2 and "sav_001/sav_001002.mp4: no sav_001002_manual.json beside it" in r.stderr


def test_frame_count_mismatch_fails_only_its_video(sav_src: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    path = next(src.rglob("sav_000001_manual.json"))
    doc = json.loads(path.read_text())
    doc["video_frame_count"] = 16.0  # still room for the 4 annotated frames, but the mp4 has 14
    path.write_text(json.dumps(doc))
    out = tmp_path / "out"
    r = _cli(src, out, "--workers", "1")
    assert r.returncode == 1
    assert (
        "FAILED sav_000001" in r.stdout
        and "has 14 frames, the JSON's video_frame_count is 16" in r.stdout
        and "fix: re-download" in r.stdout
    )
    assert "1 converted" in r.stdout and not (out / "_meta" / "sav_000001.json").exists()


def test_symlink_in_output_exits_2_and_writes_nothing(sav_src: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("user data")
    out = tmp_path / "out"
    (out / "Annotations").mkdir(parents=True)
    os.symlink(victim, out / "Annotations" / "sav_000001")
    before = folder_state(tmp_path)
    r = _cli(sav_src, out)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "is a symlink" in r.stderr and "sav_000001" in r.stderr
    assert folder_state(tmp_path) == before


def test_input_link_leading_out_and_overlapping_output_exit_2(sav_src: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    outside = tmp_path / "elsewhere.mp4"
    mp4 = next(src.rglob("sav_001002.mp4"))
    shutil.move(mp4, outside)
    mp4.symlink_to(outside)  # a video of the release that is really a file outside --sav_path
    r = _cli(src, tmp_path / "out")
    assert r.returncode == 2 and "sav_001/sav_001002.mp4" in r.stderr and "leads outside" in r.stderr
    assert not (tmp_path / "out").exists()
    r = _cli(sav_src, sav_src / "train-vos")  # the output inside the release: a clean-up could delete sources
    assert r.returncode == 2 and "overlap" in r.stderr and not (sav_src / "train-vos").exists()


def test_a_release_folder_linked_from_elsewhere_or_no_video_exits_2(sav_src: Path, tmp_path: Path) -> None:
    # sav_001/ on another disk, linked in: os.walk skipped it and the run "succeeded" without its videos
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    shutil.move(src / "sav_001", tmp_path / "disk2_sav_001")
    (src / "sav_001").symlink_to(tmp_path / "disk2_sav_001")
    r = _cli(src, tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sav_001: a symlink to a folder outside --sav_path" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    # a --sav_path without any video (a typo, or the tars not extracted yet) printed "sequences: 0" and exit 0
    (tmp_path / "empty").mkdir()
    r = _cli(tmp_path / "empty", tmp_path / "out")
    assert r.returncode == 2 and "no <video>.mp4 found" in r.stderr and "fix: point --sav_path" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_dangling_link_in_the_release_is_named_before_anything_is_written(sav_src: Path, tmp_path: Path) -> None:
    # an mp4 (or JSON) linked to a file that was moved away: a bare "No such file" in the middle of the run before
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    mp4 = next(src.rglob("sav_001002.mp4"))
    mp4.unlink()
    mp4.symlink_to(src / "moved-away.mp4")
    r = _cli(src, tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "sav_001/sav_001002.mp4: a broken link or not a regular file" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_an_unreadable_mp4_fails_its_video_naming_the_fix(sav_src: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(sav_src, src)
    next(src.rglob("sav_001002.mp4")).write_bytes(b"not an mp4")  # an interrupted download
    r = _cli(src, tmp_path / "out", "--workers", "1")
    assert r.returncode == 1 and "1 converted" in r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("FAILED sav_001002"))
    assert "sav_001/sav_001002.mp4: OpenCV cannot open the video" in line and "fix: re-download" in line


_CTRL_C = """
import os, signal, sys, time
from pathlib import Path
import cutie.dataprep.sav as sav
convert = sav.convert_video
def ctrl_c_in_second(output, job):  # runs in a worker: the terminal sends Ctrl-C to the whole process group
    if job.video == "sav_001002":
        os.killpg(os.getpgid(0), signal.SIGINT)
        time.sleep(60)  # ended by the pool's terminate
    return convert(output, job)
sav.convert_video = ctrl_c_in_second
sys.exit(sav.run_cli(Path(sys.argv[1]), Path(sys.argv[2]), "manual", 2))
"""


def test_ctrl_c_ends_with_one_line_and_the_rerun_finishes(sav_src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", _CTRL_C, str(sav_src), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, start_new_session=True)
    # a traceback from the main process and from every worker, exit -2, before
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("interrupted: the videos finished so far are kept; rerun")
    assert not (out / "_meta" / "sav_001002.json").exists()
    r = _cli(sav_src, out)
    assert r.returncode == 0 and (out / "_meta" / "sav_001002.json").is_file()


def test_reading_the_jsons_shows_progress(sav_src: Path, tmp_path: Path) -> None:
    # the release's JSONs take minutes to read and check, on every rerun too: that phase was silent
    r = _cli(sav_src, tmp_path / "out", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "SA-V json: 100%" in r.stderr and "2/2" in r.stderr, r.stderr

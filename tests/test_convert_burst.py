"""BURST -> train-vos conversion: pixel-exact masks, documented id mapping, resumability, input errors."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import file_tree as _tree
from _helpers import repeat_key, run_converter
from PIL import Image
from pycocotools import mask as mask_utils

from cutie.dataprep import burst
from cutie.dataprep.convert import InputError
from cutie.dataprep.rle import compressed_counts, rle_total
from cutie.utils.atomic import TEMP_SUFFIX
from cutie.utils.palette import davis_palette

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools
REPO = Path(__file__).resolve().parents[1]
_cli = functools.partial(run_converter, "convert_burst_to_vos_train.py")


def _decode(rle: str, h: int, w: int) -> np.ndarray:
    return mask_utils.decode({"size": [h, w], "counts": rle.encode("ascii")}).astype(bool)


@pytest.fixture(scope="module")
def burst_src(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the raw tiny BURST set (tests modify it)."""
    dst = tmp_path_factory.mktemp("burst") / "BURST"
    shutil.copytree(tiny_data / "BURST", dst)
    return dst


@pytest.fixture(scope="module")
def converted(burst_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("burst_out") / "train-vos"
    r = _cli(burst_src / "train/train.json", burst_src / "frames/train", out, "--save_all_image", "--workers", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 converted" in r.stdout
    return out


def test_compressed_counts_match_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for i in range(60):
        h, w = (int(v) for v in rng.integers(1, 120, size=2))
        m = rng.random((h, w)) < (0.0 if i % 5 == 0 else rng.random())
        if i % 7 == 0:
            m[:] = True
        counts = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        runs = compressed_counts(counts)
        assert rle_total(counts) == h * w and runs.min() >= 0
        flat = m.flatten(order="F")
        assert np.array_equal(np.repeat(np.arange(len(runs)) % 2, runs).astype(bool), flat)


def test_masks_equal_pycocotools_decode_with_documented_ids(burst_src: Path, converted: Path) -> None:
    doc = json.loads((burst_src / "train/train.json").read_text())
    palette = davis_palette()
    overlap_pixels = remapped = empty_frames = 0
    for seq in doc["sequences"]:
        video = f"{seq['dataset']}_-_{seq['seq_name']}"
        h, w = seq["height"], seq["width"]
        id_map = {
            int(k): v for k, v in json.loads((converted / "_meta" / f"{video}.json").read_text())["id_map"].items()
        }
        # Documented mapping: ids <= 255 kept; larger ones -> smallest unused ids, in order of first appearance.
        first_seen = list(dict.fromkeys(int(t) for frame in seq["segmentations"] for t in frame))
        assert sorted(id_map) == sorted(first_seen)
        small = {t for t in first_seen if t <= 255}
        big = [t for t in first_seen if t > 255]
        free = [i for i in range(1, 256) if i not in small][: len(big)]
        assert id_map == {**{t: t for t in small}, **dict(zip(big, free, strict=True))}
        remapped += len(big)
        for frame, seg in zip(seq["annotated_image_paths"], seq["segmentations"], strict=True):
            stem = Path(frame).stem
            with Image.open(converted / "Annotations" / video / f"{stem}.png") as png:
                assert png.mode == "P" and png.getpalette()[:48] == palette[:48]
                got = np.array(png)
            expected = np.zeros((h, w), np.uint8)
            cover = np.zeros((h, w), np.int32)
            for track, ann in seg.items():  # later track in the JSON wins
                m = _decode(ann["rle"], h, w)
                expected[m] = id_map[int(track)]
                cover += m
            assert np.array_equal(got, expected), f"{video}/{stem}"
            overlap_pixels += int((cover > 1).sum())
            empty_frames += not seg
            assert not seg or got.any()
            src = burst_src / "frames/train" / seq["dataset"] / seq["seq_name"] / frame
            assert (converted / "JPEGImages" / video / Path(frame).name).read_bytes() == src.read_bytes()
        assert sorted(p.stem for p in (converted / "JPEGImages" / video).iterdir()) == sorted(
            Path(f).stem for f in seq["annotated_image_paths"]
        )
        assert sorted(p.stem for p in (converted / "Annotations" / video).iterdir()) == sorted(
            Path(f).stem for f in seq["annotated_image_paths"]
        )
        assert sorted(p.name for p in (converted / "JPEGImages_all_frames" / video).iterdir()) == sorted(
            seq["all_image_paths"]
        )
    assert overlap_pixels > 0 and remapped >= 2 and empty_frames >= 1  # the edge cases were exercised


def test_rerun_is_a_no_op(burst_src: Path, converted: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in converted.rglob("*") if p.is_file()}
    r = _cli(burst_src / "train/train.json", burst_src / "frames/train", converted, "--save_all_image")
    assert r.returncode == 0 and "0 converted, 3 already done" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in converted.rglob("*") if p.is_file()} == before


def test_interrupted_run_then_rerun_gives_identical_bytes(burst_src: Path, converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    reference = _tree(converted)
    videos = sorted(p.name for p in (out / "Annotations").iterdir())
    # As a kill would leave things: a sequence without marker and half-written files, a stray temp file,
    # a sequence with frames missing; one finished sequence stays.
    (out / "_meta" / f"{videos[0]}.json").unlink()
    first_png = sorted((out / "Annotations" / videos[0]).iterdir())[0]
    first_png.write_bytes(first_png.read_bytes()[:20])
    (out / "Annotations" / videos[0] / f".00000001.png.abc{TEMP_SUFFIX}").write_bytes(b"partial")
    (out / "_meta" / f"{videos[1]}.json").unlink()
    shutil.rmtree(out / "JPEGImages" / videos[1])
    (out / "_meta" / f".x.json.abc{TEMP_SUFFIX}").write_text("{")  # the atomic writer's temporary names
    summary = burst.convert(
        json.loads((burst_src / "train/train.json").read_text()), burst_src / "frames/train", out, True, workers=1
    )
    assert (summary.converted, summary.skipped, summary.failed) == (2, 1, [])
    assert _tree(out) == reference


def test_changed_sequence_is_redone(burst_src: Path, converted: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    doc = json.loads((burst_src / "train/train.json").read_text())
    seq = doc["sequences"][0]
    seq["segmentations"][1] = {}  # the annotation of one frame changed
    summary = burst.convert(doc, burst_src / "frames/train", out, True, workers=1)
    assert (summary.converted, summary.skipped) == (1, 2)
    stem = Path(seq["annotated_image_paths"][1]).stem
    assert not np.array(Image.open(out / "Annotations" / burst.video_name(seq) / f"{stem}.png")).any()


def _broken(doc: dict, how: str) -> tuple[dict, str]:
    doc = json.loads(json.dumps(doc))
    seq = doc["sequences"][1]
    name = burst.video_name(seq)
    if how == "missing_key":
        del seq["height"]
        return doc, f"sequence {name} (sequences[1]): missing key(s) height"
    if how == "rle_size":
        frame = seq["annotated_image_paths"][2]
        track = next(iter(seq["segmentations"][2]))
        smaller = np.zeros((seq["height"] - 4, seq["width"]), np.uint8, order="F")  # an RLE of another frame size
        smaller[5:20, 5:30] = 1
        seq["segmentations"][2][track]["rle"] = mask_utils.encode(smaller)["counts"].decode("ascii")
        return doc, f'sequences[1].segmentations[2]["{track}"].rle: RLE covers'  # the JSON location of the field
    if how == "frame_twice":
        frame = seq["annotated_image_paths"][1]
        seq["annotated_image_paths"][2] = frame
        return doc, f"frame {frame} is listed twice in annotated_image_paths"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing_key", "rle_size", "frame_twice"])
def test_malformed_json_is_rejected_before_writing(burst_src: Path, tmp_path: Path, how: str) -> None:
    doc, message = _broken(json.loads((burst_src / "train/train.json").read_text()), how)
    with pytest.raises(InputError, match="nothing was written") as err:
        burst.convert(doc, burst_src / "frames/train", tmp_path / "out", workers=1)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_malformed_json_exit_code(burst_src: Path, tmp_path: Path) -> None:
    doc, message = _broken(json.loads((burst_src / "train/train.json").read_text()), "rle_size")
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    r = _cli(tmp_path / "bad.json", burst_src / "frames/train", tmp_path / "out")
    assert r.returncode == 2 and message in r.stderr and not (tmp_path / "out").exists()


def test_a_track_given_twice_in_one_frame_is_refused(burst_src: Path, tmp_path: Path) -> None:
    # json.loads kept the second of the two masks of the track without a word: one of them was lost
    doc = json.loads((burst_src / "train/train.json").read_text())
    seg = doc["sequences"][1]["segmentations"][2]
    track = next(iter(seg))
    (tmp_path / "twice.json").write_text(repeat_key(doc, seg, track, seg[track]))
    r = _cli(tmp_path / "twice.json", burst_src / "frames/train", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"sequences[1].segmentations[2]: duplicate key '{track}'" in r.stderr
    assert "nothing was written" in r.stderr and "fix: repair or re-download" in r.stderr
    assert not (tmp_path / "out").exists()


def test_converted_videos_not_in_the_source_are_kept_and_named_last(
    burst_src: Path, converted: Path, tmp_path: Path
) -> None:
    # sequences removed from the JSON (or another split converted into the same folder) stayed in the output,
    # and training read them as part of the dataset without a word
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    doc = json.loads((burst_src / "train/train.json").read_text())
    gone = sorted(burst.video_name(seq) for seq in doc["sequences"][1:])
    doc["sequences"] = doc["sequences"][:1]
    (tmp_path / "fewer.json").write_text(json.dumps(doc))
    before = _tree(out)
    r = _cli(tmp_path / "fewer.json", burst_src / "frames/train", out, "--save_all_image")
    assert r.returncode == 0 and "0 converted, 1 already done" in r.stdout, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith(f"warning: {len(gone)} converted video(s) in {out} are not in this source"), last
    assert all(v in last for v in gone) and "fix: remove their" in last and "fresh --output_path" in last, last
    assert _tree(out) == before  # named, not deleted
    r = _cli(burst_src / "train/train.json", burst_src / "frames/train", out, "--save_all_image")
    assert r.returncode == 0 and "warning" not in r.stdout, r.stdout  # the whole source again: nothing to say


def test_missing_frame_fails_only_its_sequence(burst_src: Path, converted: Path, tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    shutil.copytree(burst_src / "frames/train", frames)
    doc = json.loads((burst_src / "train/train.json").read_text())
    seq = doc["sequences"][0]
    missing = frames / seq["dataset"] / seq["seq_name"] / seq["annotated_image_paths"][3]
    missing.unlink()
    out = tmp_path / "out"
    r = _cli(burst_src / "train/train.json", frames, out, "--save_all_image", "--workers", "2")
    assert r.returncode == 1
    assert f"FAILED {burst.video_name(seq)}" in r.stdout and str(missing) in r.stdout
    assert "2 converted" in r.stdout and "1 failed" in r.stdout
    assert not (out / "_meta" / f"{burst.video_name(seq)}.json").exists()
    # Restore the frame: the rerun converts only the failed sequence and the result equals a clean run.
    shutil.copy(burst_src / "frames/train" / seq["dataset"] / seq["seq_name"] / missing.name, missing)
    r = _cli(burst_src / "train/train.json", frames, out, "--save_all_image")
    assert r.returncode == 0 and "1 converted, 2 already done" in r.stdout
    assert _tree(out) == _tree(converted)


def test_killed_process_then_rerun_identical(burst_src: Path, tmp_path: Path) -> None:
    """A real SIGKILL while converting (wherever it lands), then a rerun: same bytes as one clean run."""
    frames = tmp_path / "frames"
    shutil.copytree(burst_src / "frames/train", frames)
    doc = json.loads((burst_src / "train/train.json").read_text())
    seqs = []
    for k in range(8):  # more sequences, so the kill usually lands half-way
        for seq in doc["sequences"]:
            s = json.loads(json.dumps(seq))
            s["seq_name"] = f"{seq['seq_name']}-{k}"
            (frames / s["dataset"] / s["seq_name"]).symlink_to(frames / seq["dataset"] / seq["seq_name"])
            seqs.append(s)
    doc["sequences"] = seqs
    (tmp_path / "big.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "convert_burst_to_vos_train.py"),
        "--json_path",
        str(tmp_path / "big.json"),
        "--frames_path",
        str(frames),
        "--output_path",
        str(out),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(out.glob("_meta/*.json"))) >= 3:
            break
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    done_at_kill = len(list(out.glob("_meta/*.json")))
    rerun = _cli(tmp_path / "big.json", frames, out)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    clean = _cli(tmp_path / "big.json", frames, tmp_path / "clean", "--workers", "2")
    assert clean.returncode == 0
    assert _tree(out) == _tree(tmp_path / "clean")
    assert f"{len(seqs) - done_at_kill} converted" in rerun.stdout  # the rerun redid exactly the unfinished ones


def test_unreadable_json_names_the_fix(burst_src: Path, tmp_path: Path) -> None:
    text = (burst_src / "train/train.json").read_text()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])  # an interrupted download
    r = _cli(tmp_path / "cut.json", burst_src / "frames/train", tmp_path / "out")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot read {tmp_path / 'cut.json'}: ") and "fix: repair or re-download" in line
    r = _cli(tmp_path / "nothing.json", burst_src / "frames/train", tmp_path / "out")
    assert r.returncode == 2 and "No such file" in r.stderr and "fix: check --json_path" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_sequence_without_annotated_frames_is_counted_and_left_out(burst_src: Path, tmp_path: Path) -> None:
    doc = json.loads((burst_src / "train/train.json").read_text())
    seq = doc["sequences"][1]
    seq["annotated_image_paths"], seq["segmentations"] = [], []
    (tmp_path / "t.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    for _ in range(2):  # and a rerun agrees
        r = _cli(tmp_path / "t.json", burst_src / "frames/train", out)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"note: 1 sequence(s) without annotated frames left out (e.g. {seq['dataset']}_-_{seq['seq_name']})" in (
            r.stdout
        )
    # it had a completion record without frames: the data check called that unfinished, and no rerun finished it
    records = {p.stem for p in (out / "_meta").glob("*.json")}
    assert len(records) == 2 and records == {p.name for p in (out / "JPEGImages").iterdir() if any(p.iterdir())}

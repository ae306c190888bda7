"""Dataset index: discovery, validation errors (dataset, paths, count, fix), exclusions, summary table; every
frame checked (later-frame defects, frame sizes), unfinished converter outputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from _damage import DEFECTS
from PIL import Image

from cutie.data.index.datasets import (
    DataValidationError,
    build_static_index,
    build_video_index,
    format_table,
    load_empty_masks,
    summarize,
    validate,
)
from cutie.dataprep.convert import Job, write_marker
from cutie.testing.synthetic import make_static_dataset, make_video_dataset


def _cfg(vos: dict | None = None, static: dict | None = None) -> dict:
    return {
        "vos_datasets": vos or {},
        "image_datasets": static or {},
        "main_training": {"datasets": list(vos or {})},
        "pre_training": {"datasets": list(static or {})},
    }


def _vos(name: str = "vid", **kw) -> dict:
    return {
        "image_directory": f"{name}/JPEGImages",
        "mask_directory": f"{name}/Annotations",
        "multiplier": 1,
        "frame_interval": 1,
        "subset": None,
        "empty_masks": None,
        **kw,
    }


def test_video_index_counts_multiplier_and_short_videos(tmp_path: Path, caplog) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=2, frames=6)
    make_video_dataset(str(tmp_path / "short"), videos=1, frames=3, seed=1)
    cfg = _cfg({"A": _vos("vid", multiplier=3), "B": _vos("short")})
    with caplog.at_level(logging.INFO):
        with pytest.raises(DataValidationError, match=r"\[B\] no usable video"):
            build_video_index(cfg, str(tmp_path), seq_length=4)
    assert "shorter than the clip length 4 are excluded" in caplog.text
    index = build_video_index(_cfg({"A": _vos("vid", multiplier=3)}), str(tmp_path), seq_length=4)
    assert len(index) == 2 * 6 * 3
    assert index.sets[0].videos == ["video000", "video001"]
    assert index.sets[0].jpgs[0][:2] == ["00000.jpg", "00001.jpg"]
    assert np.bincount(index.seed_frame, minlength=6).tolist() == [6] * 6  # every frame, multiplied


def test_validation_names_dataset_paths_count_and_fix(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=3, frames=5)
    # Two unpaired videos (a JPEG removed: its PNG has no frame), one size mismatch.
    os.remove(tmp_path / "vid/JPEGImages/video000/00002.jpg")
    os.remove(tmp_path / "vid/JPEGImages/video001/00004.jpg")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="P").save(tmp_path / "vid/Annotations/video002/00000.png")
    cfg = _cfg(
        {"DAVISX": _vos("vid"), "GONE": _vos("nowhere")}, {"STAT": {"directory": "missing", "data_structure": 1}}
    )
    with pytest.raises(DataValidationError) as e:
        build_video_index(cfg, str(tmp_path), seq_length=3)
    msg = str(e.value)
    assert "[DAVISX] 2 videos with masks (PNGs) that have no frame (JPEG) of the same name" in msg
    assert str(tmp_path / "vid/Annotations/video000/00002.png") in msg
    assert "[DAVISX] 1 frames whose image and mask sizes differ" in msg and "video002/00000.png (mask 10x10" in msg
    assert "[GONE] image directory" in msg and str(tmp_path / "nowhere/JPEGImages") in msg
    assert msg.count("fix:") >= 3
    with pytest.raises(DataValidationError, match=r"\[STAT\] directory .*missing does not exist \(fix: "):
        build_static_index(cfg, str(tmp_path))


def test_colour_masks_are_rejected_with_the_fix(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=2, frames=4)
    first = tmp_path / "vid/Annotations/video001/00000.png"
    Image.open(first).convert("RGB").save(first)
    colour = r"\[C\] 1 colour \(RGB\) masks instead of object ids.*video001/00000.png \(mode RGB\).*palette PNGs"
    with pytest.raises(DataValidationError, match=colour):
        build_video_index(_cfg({"C": _vos("vid")}), str(tmp_path), seq_length=3)


def test_subset_and_empty_mask_lists(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=3, frames=5, empty_first=2)
    (tmp_path / "train.txt").write_text("video000\nvideo002\n")
    (tmp_path / "empty.txt").write_text("# comment\nvideo000/00000.png\nvideo000/00001.png\nvideo002/00001.png\n")
    cfg = _cfg({"A": _vos("vid", subset="train.txt", empty_masks=str(tmp_path / "empty.txt"))})
    index = build_video_index(cfg, str(tmp_path), seq_length=3)
    vset = index.sets[0]
    assert vset.videos == ["video000", "video002"]
    assert vset.empty[0].tolist() == [True, True, False, False, False]
    assert vset.empty[1].tolist() == [False, True, False, False, False]
    (tmp_path / "train.txt").write_text("video000\nvideo009\n")
    with pytest.raises(DataValidationError, match=r"1 videos of the subset list are missing .*video009"):
        build_video_index(cfg, str(tmp_path), seq_length=3)
    # The official JSON format is read too.
    (tmp_path / "e.json").write_text('{"v": ["00000", "00003"]}')
    assert load_empty_masks(str(tmp_path / "e.json")) == {"v": {"00000", "00003"}}
    # A video listed twice is refused (json.loads would keep the second list and lose the first's frames).
    (tmp_path / "e.json").write_text('{"v": ["00000"], "w": [], "v": ["00003"]}')
    with pytest.raises(ValueError, match="duplicate key 'v'"):
        load_empty_masks(str(tmp_path / "e.json"))


def test_static_structures_and_summary_table(tmp_path: Path) -> None:
    make_static_dataset(str(tmp_path / "flat"), images=3, structure=1)
    make_static_dataset(str(tmp_path / "fss"), images=4, structure=0, seed=1)
    (tmp_path / "flat/lonely.jpg").write_bytes((tmp_path / "flat/img0000.jpg").read_bytes())
    cfg = _cfg(
        {"V": _vos("absent")},
        {
            "FLAT": {"directory": "flat", "data_structure": 1, "multiplier": 2},
            "FSS": {"directory": "fss", "data_structure": 0, "multiplier": 1},
        },
    )
    reports = summarize(cfg, str(tmp_path), seq_length=3)
    by = {r.name: r for r in reports}
    assert by["FLAT"].frames == 4 and by["FLAT"].masks == 3 and "1 images without a mask" in by["FLAT"].problems[0]
    assert by["FSS"].ok and by["FSS"].frames == 4
    assert not by["V"].found
    table = format_table(reports)
    assert table.splitlines()[0].split() == ["dataset", "path", "found", "videos", "frames", "masks", "problems"]
    assert "lonely.jpg" in table
    os.remove(tmp_path / "flat/lonely.jpg")
    index = build_static_index(cfg, str(tmp_path))
    assert len(index) == 3 * 2 + 4
    assert all(p[0].endswith(".jpg") and p[1].endswith(".png") for s in index.sets for p in s.pairs)


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_a_later_frame_defect_fails_the_startup_validation(tmp_path: Path, defect: str) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=3, frames=6)
    ext, damage, phrase = DEFECTS[defect]
    folder = "JPEGImages" if ext == "jpg" else "Annotations"
    victim = tmp_path / "vid" / folder / "video001" / f"00004.{ext}"
    damage(victim)
    cfg = _cfg({"V": _vos("vid")})
    with pytest.raises(DataValidationError) as e:
        validate(cfg, str(tmp_path), seq_length=3, stages=["main_training"], cache_root=str(tmp_path / "cache"))
    msg = str(e.value)
    assert f"[V] 1 {phrase}: {victim}" in msg and "(fix: " in msg, msg
    assert msg.count("[V]") == 1  # one problem: the other frames and videos are sound


def test_frames_must_keep_the_first_frame_size(tmp_path: Path) -> None:
    make_video_dataset(str(tmp_path / "vid"), videos=1, frames=5, size=(40, 60))
    make_video_dataset(str(tmp_path / "big"), videos=1, frames=5, size=(44, 60))
    for ext, folder in (("jpg", "JPEGImages"), ("png", "Annotations")):
        src = tmp_path / "big" / folder / "video000" / f"00003.{ext}"
        src.replace(tmp_path / "vid" / folder / "video000" / f"00003.{ext}")
    reports = summarize(_cfg({"V": _vos("vid")}), str(tmp_path), seq_length=3, stages=["main_training"])
    (line,) = reports[0].problems
    assert line.startswith("1 frames whose size differs from their video's first frame: ")
    assert "video000/00003.jpg (60x44, the first frame 00000.jpg is 60x40)" in line


def test_an_unfinished_conversion_is_reported_as_incomplete(tmp_path: Path) -> None:
    out = tmp_path / "conv"
    make_video_dataset(str(out), videos=3, frames=4)
    for v in ("video000", "video002"):  # the converter's own completion records; video001 was never finished
        write_marker(out, Job(v, "f" * 40, {}), {"id_map": {}})
    (out / "_meta" / "video009.json").write_text("{}")  # a record without frames (and without a fingerprint)
    cfg = _cfg({"CONV": _vos("conv")})
    (rep,) = summarize(cfg, str(tmp_path), seq_length=3, stages=["main_training"])
    assert [p.kind for p in rep.issues] == ["incomplete_conversion"] * 2
    assert rep.videos == 3 and not rep.ok  # the frames are sound; the output is still not complete
    (line,) = rep.problems
    assert line.startswith("2 videos of an unfinished conversion: ")
    assert f"{out}/JPEGImages/video001 (no valid completion record {out}/_meta/video001.json)" in line
    assert "video009.json (completion record of a video with no frames)" in line and "rerun the converter" in line
    # every converter is named: an SA-V output (convert_sav_to_vos.py) was told to rerun BURST's or OVIS's
    assert all(f"scripts/convert_{c}.py" in line for c in ("burst_to_vos_train", "ovis_to_vos", "sav_to_vos")), line
    write_marker(out, Job("video001", "f" * 40, {}), {})
    (out / "_meta" / "video009.json").unlink()
    assert validate(cfg, str(tmp_path), seq_length=3, stages=["main_training"])[0].ok
    # A record with a repeated key is not one the converter wrote (plain JSON would keep the last value).
    f, e = "f" * 40, "e" * 40
    (out / "_meta" / "video002.json").write_text(f'{{"fingerprint": "{f}", "fingerprint": "{e}"}}')
    (rep,) = summarize(cfg, str(tmp_path), seq_length=3, stages=["main_training"])
    assert "video002 (no valid completion record" in rep.problems[0]


def test_static_sets_check_every_file(tmp_path: Path) -> None:
    make_static_dataset(str(tmp_path / "flat"), images=4, structure=1)
    DEFECTS["truncated_jpeg"][1](tmp_path / "flat/img0002.jpg")
    DEFECTS["wrong_size_mask"][1](tmp_path / "flat/img0003.png")
    cfg = _cfg(static={"FLAT": {"directory": "flat", "data_structure": 1, "multiplier": 1}})
    (rep,) = summarize(cfg, str(tmp_path), stages=["pre_training"], cache_root=str(tmp_path / "cache"))
    assert [p.kind for p in rep.issues] == ["truncated_jpeg", "size_mismatch"]
    assert str(tmp_path / "flat/img0002.jpg") in rep.problems[0] and "img0003.png (mask " in rep.problems[1]

"""check_data (passes on the tiny set, names the problem on a broken copy) and the empty-mask lists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _damage import DEFECTS
from PIL import Image

from cutie.data.index.datasets import load_empty_masks
from cutie.dataprep.convert import Job, write_marker
from cutie.testing.synthetic import make_video_dataset

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True)


@pytest.fixture
def broken(tiny_data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    return copy


def test_check_data_passes_on_tiny(tiny_data: Path, tmp_path: Path) -> None:
    r = _run("check_data.py", "data=tiny", f"data_root={tiny_data}", f"cache_root={tmp_path}")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {ln.split()[0]: ln.split() for ln in r.stdout.splitlines() if ln.strip()}
    for name in ("FSS", "DUTS_TR", "DUTS_TE", "ECSSD", "BIG", "HRSOD", "DAVIS", "YouTubeVOS", "MOSE"):
        assert rows[name][2] == "yes" and rows[name][-1] == "-", rows[name]
    assert rows["DAVIS"][1] == str(tiny_data / "DAVIS/2017/trainval/JPEGImages/480p")
    assert "OK:" in r.stdout and "no empty-mask list" in r.stdout  # optional lists are noted, not fatal


def test_check_data_names_unpaired_frame(broken: Path, tmp_path: Path) -> None:
    video_dir = sorted((broken / "YouTube/train/JPEGImages").iterdir())[1]
    victim = sorted(video_dir.iterdir())[3]
    victim.unlink()  # its PNG has no frame now
    r = _run("check_data.py", "data=tiny", f"data_root={broken}", f"cache_root={tmp_path}")
    assert r.returncode == 1
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("YouTubeVOS"))
    assert f"{victim.parent.name}/{victim.stem}.png" in row and "fix:" in row
    assert "NOT READY: YouTubeVOS" in r.stdout


def test_check_data_reports_a_sparse_custom_folder(tiny_data: Path, tmp_path: Path) -> None:
    """The tiny custom-sparse folder: masks every 3rd / 2nd frame, late objects, a judo-like video with
    partial labels, one mask 1 px narrower than its frame (left out, named)."""
    root = tiny_data / "custom-sparse"
    overrides = ("data=custom", f"data.custom_root={root}", f"cache_root={tmp_path}", "pre_training.enabled=false")
    r = _run("check_data.py", *overrides, "main_training.seq_length=4")
    assert r.returncode == 0 and "OK:" in r.stdout, r.stdout + r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("CUSTOM")).split()
    assert row[2:7] == ["yes", "2", "54", "19", "-"]  # 2 usable videos, every JPEG and PNG counted, no problem
    assert "CUSTOM: 0 dense, 2 sparse videos (annotation step 2: 1, step 3: 1); excluded: 1 with no object" in r.stdout
    assert (
        "partial labels (an object labelled in one annotated frame only) in 1 video: judo-like (objects 1, 2, 3)"
        in (r.stdout)
    )
    narrow = root / "Annotations/walk-sparse/00009.png"
    assert f"{narrow}: size mismatch: mask 159x120, its frame 00009.jpg is 160x120" in r.stdout
    # The default clip of 8 annotated frames fits no video: the reason and the numbers, not "check the path".
    r = _run("check_data.py", *overrides)
    assert r.returncode == 1 and "NOT READY: CUSTOM" in r.stdout
    assert "3 videos; 3 have fewer annotated frames than seq_length=8 (annotated frames per video: 4-7" in r.stdout
    assert "in 1 video: judo-like (objects 1, 2, 3)" in r.stdout  # partial labels are named for short videos too


def test_check_data_missing_dataset_and_disabled_stage(broken: Path, tmp_path: Path) -> None:
    shutil.rmtree(broken / "static" / "ecssd")
    r = _run("check_data.py", "data=tiny", f"data_root={broken}", f"cache_root={tmp_path}")
    assert r.returncode == 1
    assert any(ln.startswith("ECSSD") and " NO " in ln for ln in r.stdout.splitlines())
    assert "fix: ECSSD:" in r.stdout
    # With pre-training disabled the static sets are not needed.
    overrides = ("data=tiny", f"data_root={broken}", f"cache_root={tmp_path}", "pre_training.enabled=false")
    r = _run("check_data.py", *overrides)
    assert r.returncode == 0 and "ECSSD" not in r.stdout


def _later_frame(data: Path, rel: str, video: int, ext: str) -> Path:
    """A frame past the first of the given video (the old check only read first frames)."""
    folder = sorted(p for p in (data / rel).iterdir() if p.is_dir())[video]
    frames = sorted(folder.glob(f"*.{ext}"))
    assert len(frames) >= 3
    return frames[2]


def test_check_data_names_each_later_frame_defect(broken: Path, tmp_path: Path) -> None:
    places = {  # defect -> (mask or image root, video)
        "wrong_size_mask": ("DAVIS/2017/trainval/Annotations/480p", 0),
        "zero_byte_png": ("YouTube/train/Annotations", 0),
        "rgb_png": ("MOSE/train/Annotations", 0),
        "truncated_jpeg": ("YouTube/train/JPEGImages", 2),
    }
    victims = {}
    for defect, (rel, video) in places.items():
        ext, damage, _ = DEFECTS[defect]
        victims[defect] = _later_frame(broken, rel, video, ext)
        damage(victims[defect])
    overrides = ("data=tiny", f"data_root={broken}", f"cache_root={tmp_path / 'cache'}", "pre_training.enabled=false")
    r = _run("check_data.py", *overrides)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NOT READY: DAVIS, YouTubeVOS, MOSE" in r.stdout
    for defect, victim in victims.items():
        phrase = DEFECTS[defect][2]
        assert f"1 {phrase}: {victim}" in r.stdout, defect  # the table row: count, file, fix
        (line,) = [ln for ln in r.stdout.splitlines() if ln.strip().startswith(f"{victim}:")]  # the file list
        assert "(fix: " in line, line


def test_check_data_second_run_reads_no_image_and_rechecks_a_changed_file(tiny_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "DAVIS", data / "DAVIS")
    overrides = ("data=tiny", f"data_root={data}", f"cache_root={tmp_path / 'cache'}", "pre_training.enabled=false")
    overrides += ("data.main_training.datasets=[DAVIS]",)
    r = _run("check_data.py", *overrides)
    assert r.returncode == 0 and "OK:" in r.stdout, r.stdout + r.stderr
    total = sum(1 for _ in (data / "DAVIS").rglob("*.jpg")) + sum(1 for _ in (data / "DAVIS").rglob("*.png"))
    assert "files checked: DAVIS " in r.stdout and f"({total} read)" not in r.stdout  # subset videos only
    # Garbage of the same size and mtime in a later frame: only a check that skips reading passes it.
    victim = _later_frame(data, "DAVIS/2017/trainval/JPEGImages/480p", 0, "jpg")
    st = victim.stat()
    victim.write_bytes(b"\x00" * st.st_size)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    r = _run("check_data.py", *overrides)
    assert r.returncode == 0 and "(0 read)" in r.stdout, r.stdout + r.stderr
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    r = _run("check_data.py", *overrides)
    assert r.returncode == 1 and "(1 read)" in r.stdout and f"1 corrupt JPEGs: {victim}" in r.stdout


def test_check_data_reports_an_unfinished_conversion(tmp_path: Path) -> None:
    out = tmp_path / "conv"
    make_video_dataset(str(out), videos=2, frames=9)
    write_marker(out, Job("video000", "f" * 40, {}), {})  # video001 has no completion record
    overrides = ("data=custom", f"data.custom_root={out}", f"cache_root={tmp_path}", "pre_training.enabled=false")
    r = _run("check_data.py", f"data_root={tmp_path}", *overrides)
    assert r.returncode == 1 and "NOT READY: CUSTOM" in r.stdout
    assert f"1 videos of an unfinished conversion: {out}/JPEGImages/video001" in r.stdout
    write_marker(out, Job("video001", "f" * 40, {}), {})
    assert _run("check_data.py", f"data_root={tmp_path}", *overrides).returncode == 0


def test_check_data_rejects_non_override_arguments() -> None:
    r = _run("check_data.py", "tiny")
    assert r.returncode == 2 and "key=value" in r.stderr


def test_empty_mask_lists_match_a_brute_force_scan(tiny_data: Path, tmp_path: Path) -> None:
    r = _run("find_empty_masks.py", "--data", "tiny", "--data_root", str(tiny_data), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    roots = {
        "DAVIS": "DAVIS/2017/trainval/Annotations/480p",
        "YouTubeVOS": "YouTube/train/Annotations",
        "MOSE": "MOSE/train/Annotations",
    }
    total = 0
    for name, rel in roots.items():
        expected: dict[str, set[str]] = {}
        for png in sorted((tiny_data / rel).glob("*/*.png")):
            if not np.array(Image.open(png)).any():
                expected.setdefault(png.parent.name, set()).add(png.stem)
        listed = load_empty_masks(str(tmp_path / f"{name}.txt"))  # the loader's own reader
        assert listed == expected, name
        lines = [ln for ln in (tmp_path / f"{name}.txt").read_text().splitlines() if not ln.startswith("#")]
        assert lines == sorted(lines) and all(ln.endswith(".png") and ln.count("/") == 1 for ln in lines)
        total += len(lines)
    assert total >= 3  # the tiny set has empty first and trailing frames
    assert "003234408d/00000.png" in (tmp_path / "YouTubeVOS.txt").read_text()


def test_empty_mask_default_location_and_missing_dataset(tiny_data: Path, tmp_path: Path) -> None:
    r = _run("find_empty_masks.py", "--data", "tiny", "--data_root", str(tiny_data), "--cache_root", str(tmp_path))
    assert r.returncode == 0 and (tmp_path / "empty_masks" / "MOSE.txt").is_file()
    r = _run("find_empty_masks.py", "--data", "mega", "--data_root", str(tiny_data), "--out", str(tmp_path / "m"))
    assert r.returncode == 1 and "BURST: mask directory" in r.stderr and "OVIS" in r.stderr
    assert (tmp_path / "m" / "DAVIS.txt").is_file()  # the present datasets are still written

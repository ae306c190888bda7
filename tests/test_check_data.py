"""check_data (passes on the tiny set, names the problem on a broken copy) and the empty-mask lists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cutie.data.index import load_empty_masks

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
    video_dir = sorted((broken / "YouTube/train/Annotations").iterdir())[1]
    victim = sorted(video_dir.iterdir())[3]
    victim.unlink()
    r = _run("check_data.py", "data=tiny", f"data_root={broken}", f"cache_root={tmp_path}")
    assert r.returncode == 1
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("YouTubeVOS"))
    assert victim.stem in row and "fix:" in row
    assert "NOT READY: YouTubeVOS" in r.stdout


def test_check_data_missing_dataset_and_disabled_stage(broken: Path, tmp_path: Path) -> None:
    shutil.rmtree(broken / "static" / "ecssd")
    r = _run("check_data.py", "data=tiny", f"data_root={broken}", f"cache_root={tmp_path}")
    assert r.returncode == 1
    assert any(ln.startswith("ECSSD") and " NO " in ln for ln in r.stdout.splitlines())
    assert "fix: ECSSD:" in r.stdout
    # With pre-training disabled the static sets are not needed.
    r = _run("check_data.py", "data=tiny", f"data_root={broken}", f"cache_root={tmp_path}", "pre_training.enabled=false")
    assert r.returncode == 0 and "ECSSD" not in r.stdout


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

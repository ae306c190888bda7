"""find_empty_masks.py on broken masks: unreadable files are named with the fix, no traceback, no partial list."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    script = str(REPO / "scripts" / "find_empty_masks.py")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_corrupt_masks_are_named_and_their_list_not_written(tiny_data: Path, tmp_path: Path, workers: str) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    videos = sorted((data / "YouTube/train/Annotations").iterdir())
    truncated = sorted(videos[0].iterdir())[1]
    truncated.write_bytes(truncated.read_bytes()[:60])  # header intact, pixel data cut short
    garbage = sorted(videos[2].iterdir())[0]
    garbage.write_bytes(b"not a png at all")
    bomb = sorted(videos[3].iterdir())[2]  # its header claims 100000x100000 pixels (PIL: a decompression bomb)
    chunks = [(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 3, 0, 0, 0)), (b"PLTE", b"\0" * 6)]
    chunks.append((b"IDAT", zlib.compress(b"\0" * 4096)))
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    out = tmp_path / "lists"
    r = _run("--data", "tiny", "--data_root", str(data), "--out", str(out), "--workers", workers)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert str(truncated) in r.stderr and str(garbage) in r.stderr and "fix: re-extract or re-convert" in r.stderr
    assert str(bomb) in r.stderr and "decompression bomb" in r.stderr
    assert "YouTubeVOS: 3 mask file(s)" in r.stderr
    assert not (out / "YouTubeVOS.txt").exists()  # an incomplete list would be worse than none
    assert (out / "DAVIS.txt").is_file() and (out / "MOSE.txt").is_file()  # the intact datasets are still listed


def test_unwritable_target_is_reported_without_traceback(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "lists").write_text("a file where the folder should be")
    r = _run("--data", "tiny", "--data_root", str(tiny_data), "--out", str(tmp_path / "lists"), "--workers", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "cannot write" in r.stderr, r.stderr


def test_symlinked_report_folder_below_cache_root_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "empty_masks").symlink_to(elsewhere)  # the lists would land in `elsewhere`
    r = _run("--data", "tiny", "--data_root", str(tiny_data), "--cache_root", str(cache), "--workers", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert str(cache / "empty_masks") in r.stderr and "symlink" in r.stderr
    assert list(elsewhere.iterdir()) == []  # nothing written through the link


def test_cache_root_itself_may_be_a_link(tiny_data: Path, tmp_path: Path) -> None:
    real = tmp_path / "real_cache"
    real.mkdir()
    (tmp_path / "cache").symlink_to(real)  # the user's choice of where derived data goes
    r = _run("--data", "tiny", "--data_root", str(tiny_data), "--cache_root", str(tmp_path / "cache"), "--workers", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (real / "empty_masks" / "DAVIS.txt").is_file() and not (real / "empty_masks").is_symlink()


def test_the_scan_shows_progress_per_dataset(tiny_data: Path, tmp_path: Path) -> None:
    # every mask is decoded (minutes for YouTube-VOS + MOSE + BURST + OVIS): the scan was silent until its summary
    r = _run("--data", "tiny", "--data_root", str(tiny_data), "--out", str(tmp_path / "lists"), "--workers", "2")
    assert r.returncode == 0, r.stderr
    for name in ("DAVIS", "YouTubeVOS", "MOSE"):
        assert f"{name} masks: 100%" in r.stderr, r.stderr
    lines = (tmp_path / "lists" / "YouTubeVOS.txt").read_text().splitlines()
    assert lines[1].startswith("# mask folder: ") and "; 4 videos, 40 masks, " in lines[1]  # the counts still add up

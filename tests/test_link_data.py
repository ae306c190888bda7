"""scripts/link_data.py: links the top-level dataset folders and reports what a data config needs, by name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "link_data.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_links_tiny_dataset_and_reports_all_present(tiny_data: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    result = _run("--data", "tiny", "--links_dir", str(links), "--source_root", str(tiny_data))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("DAVIS", "YouTube", "MOSE", "static", "BURST"):
        assert (links / name).is_symlink()
        assert not os.path.isabs(os.readlink(links / name))  # relative by default
        assert (links / name).resolve() == (tiny_data / name).resolve()
    assert not (links / "OVIS-VOS-train").exists()  # source absent: no dangling link
    assert "no folder at" in result.stdout and "all present" in result.stdout
    # A second run changes nothing.
    again = _run("--data", "tiny", "--links_dir", str(links), "--source_root", str(tiny_data))
    assert again.returncode == 0 and "created" not in again.stdout and "unchanged" in again.stdout


def test_reports_missing_datasets_by_name_with_path(tiny_data: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    result = _run("--data", "mega", "--links_dir", str(links), "--source_root", str(tiny_data))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    burst = next(ln for ln in lines if "MISSING" in ln and "BURST" in ln)
    assert str(links / "BURST" / "train-vos" / "JPEGImages") in burst
    assert any("MISSING" in ln and "OVIS" in ln and str(links / "OVIS-VOS-train") in ln for ln in lines)
    davis = next(ln for ln in lines if "present" in ln and "DAVIS" in ln)
    assert str(links / "DAVIS" / "2017" / "trainval" / "JPEGImages" / "480p") in davis
    assert "convert_burst_to_vos_train.py" in result.stdout


def test_explicit_path_and_real_folder_left_alone(tiny_data: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    (links / "static").mkdir(parents=True)
    (links / "static" / "mine.txt").write_text("keep")
    elsewhere = tmp_path / "davis_copy"
    elsewhere.symlink_to(tiny_data / "DAVIS")
    result = _run(
        "--data",
        "tiny",
        "--links_dir",
        str(links),
        "--source_root",
        str(tmp_path / "nothing"),
        "--DAVIS",
        str(elsewhere),
        "--absolute",
    )
    assert os.readlink(links / "DAVIS") == str(elsewhere)
    assert (links / "static" / "mine.txt").read_text() == "keep" and not (links / "static").is_symlink()
    assert result.returncode == 1  # static/* and the other VOS sets are missing
    assert any(
        "MISSING" in ln and "FSS" in ln and str(links / "static" / "fss") in ln for ln in result.stdout.splitlines()
    )
    assert any("present" in ln and "DAVIS" in ln for ln in result.stdout.splitlines())


def test_stale_temporary_link_name_is_cleared_when_empty_folder_or_link(tiny_data: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    (links / ".DAVIS.tmp-link").mkdir()  # left by an interrupted run (or by hand): empty, safe to remove
    (links / ".MOSE.tmp-link").symlink_to(tmp_path / "gone")  # a dangling leftover link
    result = _run("--data", "tiny", "--links_dir", str(links), "--source_root", str(tiny_data))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("DAVIS", "MOSE"):
        assert (links / name).resolve() == (tiny_data / name).resolve()
        assert not os.path.lexists(links / f".{name}.tmp-link")


def test_folder_with_content_at_temporary_link_name_is_kept_and_named(tiny_data: Path, tmp_path: Path) -> None:
    links = tmp_path / "links"
    (links / ".DAVIS.tmp-link").mkdir(parents=True)
    (links / ".DAVIS.tmp-link" / "mine.txt").write_text("keep")
    result = _run("--data", "tiny", "--links_dir", str(links), "--source_root", str(tiny_data))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(links / ".DAVIS.tmp-link") in lines[0] and "fix:" in lines[0]
    assert (links / ".DAVIS.tmp-link" / "mine.txt").read_text() == "keep"
    assert not os.path.lexists(links / "DAVIS")  # nothing linked in its place

"""scripts/check_reference.py: passes on a real fixture, fails on anything it cannot check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "check_reference.py"


def _run(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_real_fixture_passes(reference_dir: Path) -> None:
    proc = _run(reference_dir / "inference_small_104x120_t8_o3.pt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: 1 fixture(s)" in proc.stdout


def test_unknown_unreadable_or_missing_files_fail(reference_dir: Path, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown.pt"
    torch.save({"format": "something-else"}, unknown)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    for bad in (unknown, garbage, tmp_path / "missing.pt"):
        proc = _run(reference_dir / "inference_small_104x120_t8_o3.pt", bad)
        assert proc.returncode == 1, (bad, proc.stdout, proc.stderr)
        assert bad.name in proc.stderr and "1 could not be checked" in proc.stdout

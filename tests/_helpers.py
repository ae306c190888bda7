"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def file_tree(root: Path) -> dict[str, bytes]:
    """Every file below root with its bytes, keyed by relative path: equal trees are byte-identical."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_converter(script: str, json_path: Path, frames: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Runs scripts/<script> with the converters' shared command line."""
    cmd = [sys.executable, str(REPO / "scripts" / script), "--json_path", str(json_path),
           "--frames_path", str(frames), "--output_path", str(out), *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True)

"""Shared test fixtures. Tests are CPU-only; ../shared sits beside the repository root (as in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"

# Keep tests on the CPU and small, whatever the machine.
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE} (clone the repository beside ../shared)")
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated tiny dataset (every source format), made once per test session. Read-only for tests:
    a test that writes (conversion, empty-mask lists) copies what it needs or writes elsewhere."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_tiny_dataset.py"), "--out", str(out), "--seed", "0"],
        check=True,
    )
    return out

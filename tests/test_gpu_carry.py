"""scripts/gpu_carry.py: chunks under the device tool's per-call limit, staged call by call on the lent machine,
verified, and unpacked safely (a missing chunk drops DALI only, a damaged one stops, an archive cannot write
outside its folder). Tiny synthetic trees stand in for the packages; no pip, no network."""

from __future__ import annotations

import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import gpu_carry  # noqa: E402

LIMIT = gpu_carry.MARGIN + 300_000  # per call: room for ~300 KB besides the margin, so the DALI tree needs chunks


def _trees(root: Path) -> tuple[dict[str, Path], Path]:
    core = root / "core"
    (core / "hydra").mkdir(parents=True)
    (core / "hydra" / "__init__.py").write_text("__version__ = '1.3.8'\n")
    (root / "fixture_small.pt").write_bytes(b"fixture" * 100)
    dali = root / "dali"
    (dali / "nvidia" / "dali").mkdir(parents=True)
    (dali / "nvidia" / "dali" / "__init__.py").write_text("__version__ = '2.4.0'\n")
    (dali / "nvidia" / "dali" / "libdali.so").write_bytes(os.urandom(700_000))  # incompressible: 3 chunks
    return {"site": core, "reference/fixture_small.pt": root / "fixture_small.pt"}, dali


def _device(cmd: str, device_repo: Path, stage: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUTIE_GPU_STAGE": str(stage)}
    argv = [sys.executable, str(REPO / "scripts" / "gpu_carry.py"), cmd, "--out", str(device_repo / ".gpu")]
    return subprocess.run(argv, env=env, capture_output=True, text=True)


def _carry(pack: Path, k: int, device_repo: Path) -> None:
    """What one device call does to the working copy there: the carried folder replaces its old copy."""
    dest = device_repo / ".gpu" / f"call-{k}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(pack / f"call-{k}", dest)


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    core, dali = _trees(tmp_path / "src")
    core_xz, dali_xz = tmp_path / "core.tar.xz", tmp_path / "dali.tar.xz"
    gpu_carry.xz_tar(core_xz, core)
    gpu_carry.xz_tar(dali_xz, {"site": dali})
    n = gpu_carry.write_pack(tmp_path / "pack", core_xz, dali_xz, tree_bytes=0, limit=LIMIT)
    assert n == 3
    return tmp_path / "pack"


def test_plan_keeps_every_call_under_the_limit() -> None:
    cases = [(170 << 20, 30 << 20, 2 << 20), (10, 5, 0), (100 << 20, 1, 1 << 20), (166_725_000, 18_483_648, 1_400_000)]
    for dali, core, tree in cases:
        sizes = gpu_carry.plan_chunks(dali, core, tree)
        per_call = gpu_carry.CALL_LIMIT - gpu_carry.MARGIN - tree
        assert sum(sizes) == dali and all(0 < s <= per_call for s in sizes)
        assert sizes[-1] + core <= per_call  # the last call also carries the core archive
        assert len(sizes) == -(-(dali + core) // per_call)  # no more calls than the bytes need
    with pytest.raises(SystemExit, match="leaves no room"):
        gpu_carry.plan_chunks(1, gpu_carry.CALL_LIMIT, 0)


def test_calls_in_turn_install_everything(pack: Path, tmp_path: Path) -> None:
    for d in pack.glob("call-*"):
        assert sum(f.stat().st_size for f in d.iterdir()) <= LIMIT - gpu_carry.MARGIN + 4096  # + the manifest
    repo, stage = tmp_path / "device", tmp_path / "stage"
    for k in (1, 2, 3):
        _carry(pack, k, repo)
        r = _device("stage", repo, stage)
        assert r.returncode == 0, r.stderr
    assert "missing nothing" in r.stderr
    r = _device("install", repo, stage)
    assert r.returncode == 0, r.stderr
    assert f"export PYTHONPATH={stage / 'site'}" in r.stdout and f"CUTIE_REFERENCE={stage / 'reference'}" in r.stdout
    src = tmp_path / "src"
    assert (stage / "site/nvidia/dali/libdali.so").read_bytes() == (src / "dali/nvidia/dali/libdali.so").read_bytes()
    assert (stage / "site/hydra/__init__.py").is_file() and (stage / "reference/fixture_small.pt").is_file()
    again = _device("install", repo, stage)  # a rerun of the last call reuses what is unpacked
    assert again.returncode == 0 and again.stdout == r.stdout
    # A later call that carries nothing (`--parts compile` while the machine is warm) finds the stage ready.
    later = tmp_path / "device-later"
    later.mkdir()
    staged = _device("stage", later, stage)
    assert staged.returncode == 0 and "missing nothing" in staged.stderr, staged.stderr
    assert _device("install", later, stage).stdout == r.stdout


def test_a_lost_chunk_leaves_out_dali_only(pack: Path, tmp_path: Path) -> None:
    repo, stage = tmp_path / "device", tmp_path / "stage"
    for k in (1, 3):  # the machine went back after call 1: call 2's chunk never reached this stage
        _carry(pack, k, repo)
        assert _device("stage", repo, stage).returncode == 0
    r = _device("install", repo, stage)
    assert r.returncode == 0, r.stderr
    assert "DALI left out: dali-2.part never arrived" in r.stderr
    assert (stage / "site/hydra/__init__.py").is_file() and not (stage / "site/nvidia/dali").exists()


def test_a_damaged_chunk_is_refused(pack: Path, tmp_path: Path) -> None:
    repo, stage = tmp_path / "device", tmp_path / "stage"
    _carry(pack, 1, repo)
    part = repo / ".gpu/call-1/dali-1.part"
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF
    part.write_bytes(bytes(data))
    r = _device("stage", repo, stage)
    assert r.returncode != 0 and "dali-1.part does not match its manifest" in r.stderr


def test_install_without_the_last_call_names_it(tmp_path: Path) -> None:
    r = _device("install", tmp_path / "device", tmp_path / "stage")
    assert r.returncode == 2 and "no core.tar.xz staged" in r.stderr


def test_an_archive_cannot_write_outside_the_stage(pack: Path, tmp_path: Path) -> None:
    """The archives come from our own pack, but are unpacked as untrusted: '..' members are refused."""
    evil = tmp_path / "evil.tar.xz"
    payload = b"owned"
    with lzma.open(evil, "wb") as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    last = pack / "call-3"
    shutil.copyfile(evil, last / "core.tar.xz")
    manifest = json.loads((last / "manifest.json").read_text())
    manifest["files"]["core.tar.xz"] = {"sha256": gpu_carry.sha256(evil), "bytes": evil.stat().st_size}
    (last / "manifest.json").write_text(json.dumps(manifest))
    repo, stage = tmp_path / "device", tmp_path / "stage"
    _carry(pack, 3, repo)
    assert _device("stage", repo, stage).returncode == 0
    r = _device("install", repo, stage)
    assert r.returncode == 1 and "cannot be unpacked safely" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "outside.txt").exists()

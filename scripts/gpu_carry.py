#!/usr/bin/env python
"""Carries what the GPU acceptance run needs onto a lent device machine, within the device tool's limits.

The lent machine (an H200; `/work/.library/device/KINDS.md`) has Python 3.12 with torch, numpy, OpenCV, Pillow,
TensorBoard and nvidia-ml-py, but not Hydra, OmegaConf, pycocotools or DALI, and reaches no network; the shared
reference fixtures beside the checkout do not travel either. One call carries at most 64 MiB with the working
tree, and DALI with its codecs is ~170 MB even as xz, so the packages travel in chunks over back-to-back calls
(the machine keeps its /tmp while warm, 30 s after each call) and the last call runs the acceptance script:

    python scripts/gpu_carry.py pack            # here: wheels -> .gpu/call-K/ chunks, prints the calls to make
    python3 scripts/gpu_carry.py stage          # there, in every call: moves the carried chunk into the stage
    python3 scripts/gpu_carry.py install        # there, last call: unpacks, prints the shell lines to source

`scripts/gpu_acceptance.sh OUT --carried` runs `stage` and `install` itself. If the machine went back between
calls (a DALI chunk is missing), everything but DALI is installed and the `dali` part reports itself skipped.
The device side uses the standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
CALL_LIMIT = 64 * MIB  # the device tool's limit on what one call carries, the working tree included
MARGIN = 2 * MIB  # for files added to the tree after packing
# The lock's packages the lent machine lacks (KINDS.md's list), the ones the acceptance run imports.
CORE = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "pycocotools",
        "astunparse", "gast", "libcst", "makefun", "nvtx", "optree")  # fmt: skip
DALI = ("nvidia-dali-cuda130", "nvidia-nvimgcodec-cu13", "nvidia-libnvcomp-cu13", "nvidia-nvjpeg")
REFERENCE_FILES = ("fixture_*.pt", "weights_rule.py", "official_keys_*.json", "README.md")
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
STAGE = Path(os.environ.get("CUTIE_GPU_STAGE", "/tmp/cutie-gpu"))
MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- here: pack


def locked_versions(names: tuple[str, ...]) -> dict[str, str]:
    """name -> version from requirements/lock.txt (the one list of pins)."""
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==", 1)
            pins[name.lower()] = version
    missing = [n for n in names if n not in pins]
    if missing:
        raise SystemExit(f"error: requirements/lock.txt pins no version of {', '.join(missing)}")
    return {n: pins[n] for n in names}


def _pip(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if r.returncode:
        raise subprocess.CalledProcessError(r.returncode, r.args, r.stdout, r.stderr)


def _target(python: str) -> list[str]:
    plats = [a for p in PLATFORMS for a in ("--platform", p)]
    return ["--python-version", python, "--implementation", "cp", "--only-binary=:all:", *plats]


def fetch_wheels(names: tuple[str, ...], python: str, dest: Path) -> list[Path]:
    """The locked wheels for the device's Python; a package published only as source is built here (pure Python)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, version in locked_versions(names).items():
        spec = f"{name}=={version}"
        try:
            _pip("download", "-q", "--no-deps", *_target(python), "-d", str(dest), spec)
        except subprocess.CalledProcessError:  # no wheel for that Python (antlr4 4.9.3 is source only)
            before = set(dest.glob("*.whl"))
            try:
                _pip("wheel", "-q", "--no-deps", "-w", str(dest), spec)
            except subprocess.CalledProcessError as e:
                raise SystemExit(f"error: pip found no {spec}: {e.stderr.strip()[-300:]}") from None
            built = set(dest.glob("*.whl")) - before
            if not all(w.name.endswith("-none-any.whl") for w in built):
                raise SystemExit(f"error: {spec} has no wheel for Python {python} and is not pure Python") from None
    return sorted(dest.glob("*.whl"))


def install_tree(wheels: list[Path], python: str, dest: Path) -> None:
    """Installs wheels into a plain folder (what goes on PYTHONPATH there); `nvidia/` is left a namespace."""
    _pip("install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", str(dest), *_target(python),
         *map(str, wheels))  # fmt: skip
    # nvimgcodec ships nvidia/__init__.py: a regular `nvidia` package first on the path would hide the machine's
    # own nvidia.* packages (cuDNN, NCCL, ...); without it the two folders merge as one namespace.
    (dest / "nvidia" / "__init__.py").unlink(missing_ok=True)
    for junk in [*dest.rglob("__pycache__"), dest / "bin"]:
        shutil.rmtree(junk, ignore_errors=True)


def xz_tar(out: Path, members: dict[str, Path]) -> None:
    """tar.xz of {name in the archive: folder or file}; the xz command (all cores) when present."""
    raw = out.with_suffix("")  # x.tar.xz -> x.tar
    with tarfile.open(raw, "w") as tar:
        for name, path in members.items():
            tar.add(path, arcname=name)
    if shutil.which("xz"):
        subprocess.run(["xz", "-9", "-T0", "-f", str(raw)], check=True)  # writes raw + ".xz", which is out
    else:
        with raw.open("rb") as src, lzma.open(out, "wb", preset=9) as dst:
            shutil.copyfileobj(src, dst, MIB)
        raw.unlink()


def travelling_bytes() -> int:
    """What every call carries anyway: the files git does not ignore (tracked and untracked)."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.split(b"\0")  # fmt: skip
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def plan_chunks(dali_bytes: int, core_bytes: int, tree_bytes: int, limit: int = CALL_LIMIT) -> list[int]:
    """Sizes of the DALI chunks: as few calls as fit, evenly loaded; each call carries one chunk, the last one
    also the core archive, every call under the limit."""
    per_call = limit - MARGIN - tree_bytes
    if core_bytes + 1 > per_call:
        raise SystemExit(f"error: the core archive ({core_bytes / MIB:.0f} MiB) leaves no room in one call")
    n = -(-(dali_bytes + core_bytes) // per_call)
    last = min(dali_bytes, max(1, -(-(dali_bytes + core_bytes) // n) - core_bytes))
    rest = dali_bytes - last
    if n == 1 or rest == 0:
        return [dali_bytes]
    q, r = divmod(rest, n - 1)
    return [q + (k < r) for k in range(n - 1)] + [last]


class _Take(io.RawIOBase):
    """At most n bytes of a file, read on from where it stands."""

    def __init__(self, f: io.BufferedIOBase, n: int) -> None:
        self._f, self._left = f, n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 (a writable buffer)
        n = self._f.readinto(memoryview(b)[: min(len(b), self._left)])
        self._left -= n
        return n


def _split(path: Path, sizes: list[int], out: Path) -> list[Path]:
    """path cut into out/call-K/dali-K.part of the given sizes."""
    parts = []
    with path.open("rb") as f:
        for k, size in enumerate(sizes, 1):
            part = out / f"call-{k}" / f"dali-{k}.part"
            part.parent.mkdir(parents=True)
            with part.open("wb") as dst:
                shutil.copyfileobj(io.BufferedReader(_Take(f, size)), dst, MIB)
            parts.append(part)
    return parts


def write_pack(out: Path, core_xz: Path, dali_xz: Path, tree_bytes: int, limit: int = CALL_LIMIT) -> int:
    """out/call-K/: dali_xz cut into chunks, the last call's folder also holding core_xz; each folder holds the
    manifest. Returns the number of calls."""
    for old in out.glob("call-*"):
        shutil.rmtree(old)
    parts = _split(dali_xz, plan_chunks(dali_xz.stat().st_size, core_xz.stat().st_size, tree_bytes, limit), out)
    core = parts[-1].parent / "core.tar.xz"
    shutil.copyfile(core_xz, core)
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in [*parts, core]}
    manifest = {"dali_sha256": sha256(dali_xz), "dali_parts": [p.name for p in parts], "files": files}
    for p in parts:
        (p.parent / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return len(parts)


def build_archives(build: Path, python: str, ref: Path) -> tuple[Path, Path]:
    """build/core.tar.xz (Hydra & co. + the training fixtures) and build/dali.tar.xz, kept for the next pack
    while the pins, the Python version and the fixtures are unchanged (compressing DALI takes minutes)."""
    refs = {f"reference/{p.name}": p for pat in REFERENCE_FILES for p in sorted(ref.glob(pat))}
    key = {"python": python, "pins": locked_versions(CORE + DALI),
           "reference": {n: [p.stat().st_size, p.stat().st_mtime_ns] for n, p in refs.items()}}  # fmt: skip
    core_xz, dali_xz, stamp = build / "core.tar.xz", build / "dali.tar.xz", build / "key.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key and core_xz.is_file() and dali_xz.is_file():
        print(f"reusing {core_xz.name} and {dali_xz.name} of {build}", file=sys.stderr)
        return core_xz, dali_xz
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gpu_carry_", dir=build) as tmp:
        t = Path(tmp)
        print("fetching wheels ...", file=sys.stderr)
        install_tree(fetch_wheels(CORE, python, t / "wheels-core"), python, t / "core")
        install_tree(fetch_wheels(DALI, python, t / "wheels-dali"), python, t / "dali")
        print("compressing (xz -9; DALI takes several minutes) ...", file=sys.stderr)
        xz_tar(core_xz, {"site": t / "core", **refs})
        xz_tar(dali_xz, {"site": t / "dali"})
    stamp.write_text(json.dumps(key, indent=1) + "\n")
    return core_xz, dali_xz


def pack(args: argparse.Namespace) -> int:
    out = (REPO / args.out).resolve()
    if REPO not in out.parents:
        raise SystemExit(f"error: {out} is outside the repository: the device tool carries paths of the checkout")
    if subprocess.run(["git", "check-ignore", "-q", str(out / MANIFEST)], cwd=REPO).returncode != 0:
        raise SystemExit(f"error: {out} is not ignored by git: it would travel whole with every call")
    ref = Path(args.reference).resolve()
    if not any(ref.glob("fixture_*.pt")):
        raise SystemExit(f"error: no fixture_*.pt in {ref} (--reference: the shared reference folder)")
    core_xz, dali_xz = build_archives(out / "build", args.python, ref)  # out/build itself never travels
    n = write_pack(out, core_xz, dali_xz, travelling_bytes())
    print(calls_text(out, n))
    return 0


def calls_text(out: Path, n: int) -> str:
    rel = out.relative_to(REPO)
    lines = [f"{n} device calls, back to back (each within 30 s of the last: the machine stays warm that long):"]
    for k in range(1, n + 1):
        cmd = "python3 scripts/gpu_carry.py stage"
        if k == n:
            cmd = ('set -o pipefail; PYTHONUNBUFFERED=1 bash scripts/gpu_acceptance.sh "$OUT" --carried 2>&1 '
                   '| tee "$OUT/acceptance.log"')  # fmt: skip
        lines.append(f'  {k}. carry ["{rel}/call-{k}"], timeout_s {600 if k == n else 120}: {cmd}')
    # The stage outlives a call while the machine is warm: a later call carries nothing and reruns a part
    # (the compile part comes last and is the one the 420 s budget is likely to skip).
    lines.append('  then, if `status` leaves over 5 minutes and the machine is still warm: carry [], timeout_s 300: '
                 'set -o pipefail; PYTHONUNBUFFERED=1 bash scripts/gpu_acceptance.sh "$OUT" --carried --parts '
                 'compile --budget-s 240 2>&1 | tee "$OUT/acceptance.log"')  # fmt: skip
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- there: stage, install


def _manifest() -> dict | None:
    path = STAGE / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def stage(args: argparse.Namespace) -> int:
    """Moves every carried chunk (verified against its manifest) from the working copy into the stage folder."""
    STAGE.mkdir(parents=True, exist_ok=True)
    for d in sorted((REPO / args.out).glob("call-*")):
        manifest = json.loads((d / MANIFEST).read_text())
        if (old := _manifest()) is not None and old["dali_sha256"] != manifest["dali_sha256"]:
            for p in STAGE.iterdir():  # chunks of an older pack: start over
                p.unlink() if p.is_file() else shutil.rmtree(p)
        shutil.copyfile(d / MANIFEST, STAGE / MANIFEST)
        for name, meta in manifest["files"].items():
            src = d / name
            if src.is_file():
                if sha256(src) != meta["sha256"]:
                    raise SystemExit(f"error: {src} does not match its manifest (a broken transfer): pack again")
                shutil.move(src, STAGE / name)
    manifest = _manifest()
    if manifest is None:
        print(f"stage: nothing carried (no {args.out}/call-*/ here) and nothing staged in {STAGE}", file=sys.stderr)
        return 1
    have = [n for n in manifest["files"] if (STAGE / n).is_file()]
    missing = sorted(set(manifest["files"]) - set(have))
    print(f"stage {STAGE}: have {', '.join(have)}; missing {', '.join(missing) or 'nothing'}", file=sys.stderr)
    return 0


class _Chain(io.RawIOBase):
    """The DALI chunks read as one stream, hashed as it goes."""

    def __init__(self, paths: list[Path]) -> None:
        self._files: Iterator[Path] = iter(paths)
        self._f = None
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 (a writable buffer)
        while True:
            if self._f is None:
                nxt = next(self._files, None)
                if nxt is None:
                    return 0
                self._f = nxt.open("rb")
            n = self._f.readinto(b)
            if n:
                self.hash.update(memoryview(b)[:n])
                return n
            self._f.close()
            self._f = None


def _extract(stream, dest: Path, what: str) -> None:  # noqa: ANN001 (a binary file object)
    try:
        with tarfile.open(fileobj=stream, mode="r|xz") as tar:
            tar.extractall(dest, filter="data")  # no absolute paths, no '..', no links out of dest
    except (tarfile.TarError, lzma.LZMAError, EOFError) as e:
        raise SystemExit(f"error: {what} cannot be unpacked safely ({type(e).__name__}: {e}); pack again") from None


def install(args: argparse.Namespace) -> int:
    """Unpacks the staged archives; prints `export ...` lines for the shell to evaluate (notes go to stderr)."""
    manifest = _manifest()
    if manifest is None or not (STAGE / "core.tar.xz").is_file():
        print(f"error: no core.tar.xz staged in {STAGE}: run the last call of `gpu_carry.py pack`", file=sys.stderr)
        return 2
    site = STAGE / "site"
    if not (STAGE / "core.done").is_file():
        with (STAGE / "core.tar.xz").open("rb") as f:
            _extract(f, STAGE, str(STAGE / "core.tar.xz"))
        (STAGE / "core.done").write_text("")
    parts = [STAGE / p for p in manifest["dali_parts"]]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        print(f"install: DALI left out: {', '.join(missing)} never arrived (the machine went back between "
              "calls?); the dali part will be skipped", file=sys.stderr)  # fmt: skip
    elif not (STAGE / "dali.done").is_file():
        chain = _Chain(parts)
        _extract(io.BufferedReader(chain, MIB), STAGE, "the DALI chunks")
        if chain.hash.hexdigest() != manifest["dali_sha256"]:
            print("install: the DALI chunks do not add up to the packed archive; DALI left out", file=sys.stderr)
            shutil.rmtree(site / "nvidia" / "dali", ignore_errors=True)
        else:
            (STAGE / "dali.done").write_text("")
    print(f"export PYTHONPATH={site}${{PYTHONPATH:+:$PYTHONPATH}}")
    print(f"export CUTIE_REFERENCE={STAGE / 'reference'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("pack", "stage", "install"):
        s = sub.add_parser(name)
        s.add_argument("--out", default=".gpu", help="the carried folder, inside the checkout and git-ignored")
    sub.choices["pack"].add_argument("--reference", default=str(REPO.parent / "shared" / "reference"))
    sub.choices["pack"].add_argument("--python", default="3.12", help="the device machine's Python version")
    args = p.parse_args(argv)
    return {"pack": pack, "stage": stage, "install": install}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())

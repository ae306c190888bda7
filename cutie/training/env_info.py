"""The environment of a run, written to <run_dir>/env.json: versions, git commit, devices, command line."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch


def _version(module: str) -> str:
    try:
        mod = __import__(module, fromlist=["__version__"])
        return str(getattr(mod, "__version__", "?"))
    except Exception as e:  # a missing optional component is reported, not fatal
        return f"unavailable ({type(e).__name__})"


def _git_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def collect(world_size: int) -> dict:
    repo = Path(__file__).resolve().parents[2]
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "dali": _version("nvidia.dali"),
        "numpy": _version("numpy"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": gpus,
        "world_size": world_size,
        "git_commit": _git_commit(repo),
        "command": sys.argv,
    }

"""Full checkpoints: everything needed to resume bit-for-bit, written atomically.

A checkpoint is a dict: `weights` (plain official-key state dict), `optimizer`, `scheduler`, `scaler`, `stage`,
`iteration` (completed steps), `stage_complete`, `curriculum`, `rng` (one entry per rank), `config` (resolved YAML).
Files are `checkpoints/<stage>_<iteration:07d>.pth`; the newest few are kept.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from cutie.training.plan import STAGES
from cutie.utils.atomic import atomic_torch_save  # noqa: F401 (the checkpoint writer; re-exported)

_NAME = re.compile(r"^(pre_training|main_training)_(\d{7})\.pth$")


def with_suppress_unlink(p: str) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def rng_state() -> dict:
    """This process's random states (python, numpy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global state is what we checkpoint)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Runs a block without moving the global random streams (e.g. a DataLoader drawing its base seed when it
    starts), so the training stream depends only on the steps taken: a resumed run then matches an uninterrupted
    one."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


def checkpoint_path(run_dir: Path, stage: str, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{stage}_{iteration:07d}.pth"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (by stage order, then iteration)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append(((STAGES.index(m.group(1)), int(m.group(2))), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for p in list_checkpoints(run_dir)[:-keep]:
        with_suppress_unlink(str(p))


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={path}: no such file (give a path written by this trainer)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a torch file
        raise RuntimeError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); use an older checkpoint from the same folder"
        ) from e
    missing = {"weights", "optimizer", "stage", "iteration", "rng"} - set(ckpt) if isinstance(ckpt, dict) else {"*"}
    if missing:
        raise RuntimeError(
            f"{path} is not a full training checkpoint (missing {sorted(missing)}); "
            "to start from plain weights use weights=PATH instead of checkpoint=PATH"
        )
    return ckpt

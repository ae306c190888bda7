"""Helpers shared by several test modules (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def file_tree(root: Path) -> dict[str, bytes]:
    """Every file below root with its bytes, keyed by relative path: equal trees are byte-identical."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_converter(
    script: str, json_path: Path, frames: Path, out: Path, *extra: str, umask: int | None = None
) -> subprocess.CompletedProcess:
    """Runs scripts/<script> with the converters' shared command line (under `umask` if given)."""
    cmd = [sys.executable, str(REPO / "scripts" / script), "--json_path", str(json_path),
           "--frames_path", str(frames), "--output_path", str(out), *extra]  # fmt: skip
    if umask is not None:  # set in the child only, so the test process keeps its own
        cmd = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True)


def folder_state(root: Path) -> dict[str, object]:
    """Every entry below root without following symlinks: file bytes, link targets, folder marks. Equal states
    mean nothing was added, removed, changed or written through a link."""
    state: dict[str, object] = {}
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(here) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                state[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                state[rel] = ("dir",)
            else:
                state[rel] = ("file", p.read_bytes())
    return state


class TinyLinear(torch.nn.Module):
    """One linear layer from a batch's `rgb` (B*3) to `y` (B*1): the network of the stage loop's tests."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, batch: dict) -> dict:
        return {"y": self.lin(batch["rgb"])}  # B*1


def cpu_stage_context(cfg, plan, net, optimizer, run_dir: Path, *, loader=None, log_name: str = "test"):
    """A StageContext of one CPU process around `net` (as model too), with a constant lr and no AMP, for tests of
    the loop and the hooks."""
    import logging

    from cutie.training.context import StageContext
    from cutie.utils.dist import DistState

    return StageContext(
        cfg=cfg,
        plan=plan,
        dist=DistState(),
        device=torch.device("cpu"),
        run_dir=run_dir,
        net=net,
        model=net,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        loader=loader,
        log=logging.getLogger(log_name),
        writer=None,
    )


_REPEAT = "__repeated_key__"


def repeat_key(doc: object, inside: dict, key: str, value: object) -> str:
    """`doc` as JSON text in which the object `inside` (part of `doc`) holds `key` a second time, last, with
    `value`: a document json.dumps cannot write, as a hand-edited or badly merged annotation file has it."""
    inside[_REPEAT] = value
    try:
        text = json.dumps(doc)
    finally:
        del inside[_REPEAT]
    assert text.count(json.dumps(_REPEAT)) == 1
    return text.replace(json.dumps(_REPEAT), json.dumps(key))

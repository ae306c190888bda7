"""Text logging: the main process to the console and <run_dir>/train.log; other ranks warnings only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from cutie.utils.dist import DistState


def setup_logging(run_dir: Path, state: DistState) -> logging.Logger:
    log = logging.getLogger("cutie")
    log.handlers.clear()
    log.propagate = False
    prefix = "" if not state.distributed else f"[rank {state.rank}] "
    fmt = logging.Formatter(f"%(asctime)s %(levelname).1s {prefix}%(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    log.addHandler(console)
    if state.is_main:
        log.setLevel(logging.INFO)
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    else:
        log.setLevel(logging.WARNING)
    return log

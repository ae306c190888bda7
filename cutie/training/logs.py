"""Text logging: the main process to the console and <run_dir>/train.log; other ranks warnings only."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

from cutie.utils.append_file import open_append_inside
from cutie.utils.dist import DistState


class _RunLogHandler(logging.FileHandler):
    """A FileHandler (the error reporter of cutie/utils/cli.py copies its last line into these) whose file is
    opened once, never through a symlink (see cutie/utils/append_file.py)."""

    def __init__(self, run_dir: Path, name: str) -> None:
        self._run_dir, self._relative = run_dir, name
        super().__init__(run_dir / name, encoding="utf-8", delay=True)
        self.stream = self._open()  # now: a refused link stops the start-up, not the first record

    def _open(self) -> io.TextIOWrapper:
        return io.TextIOWrapper(open_append_inside(self._run_dir, self._relative), encoding="utf-8")


def setup_logging(run_dir: Path, state: DistState) -> logging.Logger:
    log = logging.getLogger("cutie")
    for old in list(log.handlers):  # an earlier run in this process (tests, notebooks): its file is closed
        log.removeHandler(old)
        old.close()
    log.propagate = False
    prefix = "" if not state.distributed else f"[rank {state.rank}] "
    fmt = logging.Formatter(f"%(asctime)s %(levelname).1s {prefix}%(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    log.addHandler(console)
    if state.is_main:
        log.setLevel(logging.INFO)
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = _RunLogHandler(run_dir, "train.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    else:
        log.setLevel(logging.WARNING)
    return log

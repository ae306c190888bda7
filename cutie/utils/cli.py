"""How every entry point ends on an error: one or a few lines with the fix and an exit code, no traceback.

`CUTIE_DEBUG=1` (or Hydra's `HYDRA_FULL_ERROR=1`) re-raises, so the full traceback is one variable away.

Exit codes shared by the entry points: 1 anything unexpected (a bug: the line says so and how to get the trace),
2 a problem with the input (configuration, data, a file handed over) found before any work, 5 the disk is full
(what was written before stays intact), 130 interrupted. Training adds 3 (stopped on request after saving) and
4 (too many unreadable samples, after saving): see cutie/train.py.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

from cutie.utils.atomic import DiskFullError

T = TypeVar("T")

EXIT_ERROR = 1
EXIT_INPUT = 2
EXIT_DISK_FULL = 5
EXIT_INTERRUPTED = 130


def debug_requested() -> bool:
    return os.environ.get("CUTIE_DEBUG", "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0]


def run_reporting_errors(fn: Callable[[], T], input_errors: Mapping[type[BaseException], str]) -> T:
    """Runs `fn`. An exception of a type in `input_errors` becomes `<label>: <message>` and exit 2 (the first
    matching type in the mapping's order wins); a full disk exit 5; anything else one line and exit 1."""
    try:
        return fn()
    except SystemExit:
        raise
    except BaseException as e:
        if debug_requested():
            raise
        if isinstance(e, KeyboardInterrupt):
            _exit("interrupted", "stopped without saving", EXIT_INTERRUPTED)
        if isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            _exit("out of disk space", f"{e.strerror or e}; what was written before is intact", EXIT_DISK_FULL)
        for kind, label in input_errors.items():
            if isinstance(e, kind):
                _exit(label, str(e), EXIT_INPUT)
        _exit(
            "internal error",
            f"{type(e).__name__}: {first_line(e)}\n  this is a bug, not your input: rerun with CUTIE_DEBUG=1 "
            "(or HYDRA_FULL_ERROR=1) for the traceback and report it",
            EXIT_ERROR,
        )
        raise  # unreachable: _exit raises


def _exit(label: str, message: str, code: int) -> None:
    print(f"{label}: {message}", file=sys.stderr)
    _record_in_log_files(f"{label}: {message}")
    raise SystemExit(code) from None


def _record_in_log_files(text: str) -> None:
    """The run's log file (train.log) ends with the same line, so that a log read later says why the run ended;
    the console got it on stderr already."""
    log = logging.getLogger("cutie")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, text, None, None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            try:
                handler.handle(record)
            except OSError:
                pass  # the log cannot be reopened (gone, or a link now): the message is on stderr already

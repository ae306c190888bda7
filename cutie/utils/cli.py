"""How every entry point ends on an error: one or a few lines with the fix and an exit code, no traceback.

`CUTIE_DEBUG=1` (or Hydra's `HYDRA_FULL_ERROR=1`) re-raises, so the full traceback is one variable away.

Exit codes: 2 a problem with the input (configuration, data, a file handed over), 4 the disk is full,
1 anything unexpected (a bug: the one line says so and how to get the trace).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

from cutie.utils.atomic import DiskFullError

T = TypeVar("T")

EXIT_INPUT = 2
EXIT_DISK_FULL = 4
EXIT_INTERNAL = 1


def debug_requested() -> bool:
    return os.environ.get("CUTIE_DEBUG", "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR", "") == "1"


def run_reporting_errors(
    fn: Callable[[], T], input_errors: tuple[type[BaseException], ...], *, label: str = "error"
) -> T:
    """Runs `fn`; `input_errors` become `<label>: <message>` and exit 2. SystemExit passes through."""
    try:
        return fn()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except DiskFullError as e:
        if debug_requested():
            raise
        print(f"disk full: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(EXIT_DISK_FULL) from None
    except input_errors as e:
        if debug_requested():
            raise
        print(f"{label}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT) from None
    except Exception as e:  # noqa: BLE001 (the last line of defence of an entry point)
        if debug_requested():
            raise
        print(
            f"internal error: {type(e).__name__}: {e}\n"
            "  this is a bug, not your input: rerun with CUTIE_DEBUG=1 for the traceback and report it",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_INTERNAL) from None

#!/usr/bin/env python
"""Generate the tiny dataset (every source format, real on-disk layouts) for CPU runs and tests.

    python scripts/make_tiny_dataset.py --out /tmp/tiny [--seed 0] [--force]

Then train on it with data=tiny data_root=/tmp/tiny (convert BURST/OVIS first for data=tiny-mega, and SA-V too
for data=tiny-mega-sav).
Layout and guarantees: cutie/dataprep/tiny.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cutie.dataprep.tiny import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be empty or absent)")
    parser.add_argument("--seed", type=int, default=0, help="same seed -> same bytes")
    parser.add_argument("--force", action="store_true", help="replace an earlier tiny dataset at --out")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = generate(args.out, seed=args.seed, force=args.force)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # not writable, disk full, ...: one line, no traceback
        print(f"error: cannot write the tiny dataset under {args.out}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    print(f"tiny dataset written to {args.out} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

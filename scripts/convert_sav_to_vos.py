#!/usr/bin/env python
"""Convert the SA-V training release (mp4 + masklet JSON) to DAVIS-style videos for training (SA-V/train-vos).

    python scripts/convert_sav_to_vos.py --sav_path ../SA-V/sav_train --output_path ../SA-V/train-vos \
        [--masklets manual|auto|both] [--workers N]

--sav_path is searched recursively (sav_000/, sav_001/, ...) for <video>.mp4 + <video>_manual.json / _auto.json.
Writes JPEGImages/<video>/<frame>.jpg and Annotations/<video>/<frame>.png for the annotated frames (every 4th
frame of the 24 fps video, named by its index: 00000, 00004, ...); where masklets overlap, the smallest one wins.
Plus _meta/<video>.json (completion marker, id map). Resumable: a rerun skips finished videos. Nothing is written
or deleted outside --output_path (a symlink there is refused). Details: cutie/dataprep/sav.py and convert.py.
Exit codes: 0 every video converted; 1 some failed (named, the others are done); 2 bad JSON values or files, or
an unsafe output folder (each problem named with its file and JSON location; nothing written); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cutie.dataprep.sav import KINDS, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sav_path", type=Path, required=True, help="the unpacked SA-V training release")
    parser.add_argument("--output_path", type=Path, required=True, help="where train-vos goes")
    parser.add_argument("--masklets", choices=sorted(KINDS), default="manual", help="which annotations to use")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    return run_cli(args.sav_path, args.output_path, args.masklets, args.workers)


if __name__ == "__main__":
    sys.exit(main())

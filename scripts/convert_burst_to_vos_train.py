#!/usr/bin/env python
"""Convert BURST training annotations to DAVIS-style videos for training (BURST/train-vos).

    python scripts/convert_burst_to_vos_train.py --json_path ../BURST/train/train.json \
        --frames_path ../BURST/frames/train --output_path ../BURST/train-vos [--save_all_image] [--workers N]

Writes JPEGImages/<dataset>_-_<seq_name>/<frame>.jpg and Annotations/.../<frame>.png (pixel = track id), plus
_meta/<video>.json (completion marker, id map for track ids > 255). Resumable: a rerun skips finished sequences.
Frame paths must stay inside --frames_path and nothing is written or deleted outside --output_path (a symlink
there is refused). Details and guarantees: cutie/dataprep/burst.py and cutie/dataprep/convert.py.
Exit codes: 0 every sequence converted; 1 some failed (named, the others are done); 2 bad JSON values or paths, or
an unsafe output folder (each problem named with its JSON location; nothing written); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cutie.dataprep.burst import convert
from cutie.dataprep.convert import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_path", type=Path, required=True, help="BURST train.json")
    parser.add_argument("--frames_path", type=Path, required=True, help="frames/train (holds <dataset>/<seq>/)")
    parser.add_argument("--output_path", type=Path, required=True, help="where train-vos goes")
    parser.add_argument("--save_all_image", action="store_true", help="also copy every frame to JPEGImages_all_frames")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    return run_cli(
        args.json_path,
        args.frames_path,
        lambda doc: convert(doc, args.frames_path, args.output_path, args.save_all_image, args.workers),
    )


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Convert OVIS training annotations (YouTube-VIS style) to DAVIS-style videos for training (OVIS-VOS-train).

    python scripts/convert_ovis_to_vos.py --json_path ../OVIS/annotations_train.json \
        --frames_path ../OVIS/train --output_path ../OVIS-VOS-train [--workers N]

Writes JPEGImages/<video>/<frame>.jpg and Annotations/<video>/<frame>.png (one id per instance, in annotation id
order), plus _meta/<video>.json (completion marker, id map). Resumable: a rerun skips finished videos.
Frame paths must stay inside --frames_path and nothing is written or deleted outside --output_path (a symlink
there is refused). Details and guarantees: cutie/dataprep/ovis.py and cutie/dataprep/convert.py.
Exit codes: 0 every video converted; 1 some failed (named, the others are done); 2 bad JSON values or paths, or
an unsafe output folder (each problem named with its JSON location; nothing written); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cutie.dataprep.convert import run_cli
from cutie.dataprep.ovis import convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_path", type=Path, required=True, help="OVIS annotations_train.json")
    parser.add_argument("--frames_path", type=Path, required=True, help="OVIS train/ (holds <video>/*.jpg)")
    parser.add_argument("--output_path", type=Path, required=True, help="where OVIS-VOS-train goes")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    return run_cli(
        args.json_path, args.frames_path, lambda doc: convert(doc, args.frames_path, args.output_path, args.workers)
    )


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Convert OVIS training annotations (YouTube-VIS style) to DAVIS-style videos for training (OVIS-VOS-train).

    python scripts/convert_ovis_to_vos.py --json_path ../OVIS/annotations_train.json \
        --frames_path ../OVIS/train --output_path ../OVIS-VOS-train [--workers N]

Writes JPEGImages/<video>/<frame>.jpg and Annotations/<video>/<frame>.png (one id per instance, in annotation id
order), plus _meta/<video>.json (completion marker, id map). Resumable: a rerun skips finished videos.
Details and guarantees: cutie/dataprep/ovis.py and cutie/dataprep/convert.py. Exit code 0 only if every video
converted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cutie.dataprep.convert import InputError
from cutie.dataprep.ovis import convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_path", type=Path, required=True, help="OVIS annotations_train.json")
    parser.add_argument("--frames_path", type=Path, required=True, help="OVIS train/ (holds <video>/*.jpg)")
    parser.add_argument("--output_path", type=Path, required=True, help="where OVIS-VOS-train goes")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    try:
        doc = json.loads(args.json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"error: cannot read {args.json_path}: {e}", file=sys.stderr)
        return 2
    if not args.frames_path.is_dir():
        print(f"error: --frames_path {args.frames_path} is not a folder", file=sys.stderr)
        return 2
    try:
        summary = convert(doc, args.frames_path, args.output_path, args.workers)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary.lines():
        print(line)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())

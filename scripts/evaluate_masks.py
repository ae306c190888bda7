"""Evaluate predicted masks against ground truth with the DAVIS 2017 semi-supervised protocol (J&F).

    python scripts/evaluate_masks.py --gt_path DAVIS/2017/trainval/Annotations/480p \
        --pred_path output/EXP/eval/d17-val/Annotations [--subset DAVIS/2017/trainval/ImageSets/2017/val.txt]

Both folders are DAVIS-layout (<video>/<frame>.png index PNGs). Prints the global and per-sequence tables,
writes them as CSV (default: beside the predictions) and, as the last line, one JSON object with the headline
numbers as fractions.
"""

from __future__ import annotations

import argparse
import json
import sys

from cutie.metrics import evaluate_folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt_path", required=True, help="ground-truth folder: <video>/<frame>.png")
    parser.add_argument("--pred_path", required=True, help="prediction folder: <video>/<frame>.png")
    parser.add_argument("--subset", default=None, help="file of sequence names (default: all in gt_path)")
    parser.add_argument("--csv_dir", default=None, help="where to write the CSV tables (default: pred_path)")
    parser.add_argument("--split", default="val", help="name used in the table titles and CSV file names")
    args = parser.parse_args(argv)

    try:
        report = evaluate_folders(args.gt_path, args.pred_path, args.subset, progress=True)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.format_tables(args.split))
    report.write_csv(args.csv_dir or args.pred_path, args.split)
    summary = report.summary()
    print(json.dumps({k: round(summary[k], 6) for k in ("J&F-Mean", "J-Mean", "F-Mean")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

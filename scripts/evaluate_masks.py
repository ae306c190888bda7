"""Evaluate predicted masks against ground truth: the DAVIS 2017 semi-supervised protocol (J&F), or SA-V's
per-object protocol when the ground truth is in SA-V's layout.

    python scripts/evaluate_masks.py --gt_path DAVIS/2017/trainval/Annotations/480p \
        --pred_path output/EXP/eval/d17-val/Annotations [--subset DAVIS/2017/trainval/ImageSets/2017/val.txt]
    python scripts/evaluate_masks.py --gt_path SA-V/sav_val/Annotations_6fps \
        --pred_path output/EXP/eval/sav-val/Annotations --subset SA-V/sav_val/sav_val.txt

DAVIS layout: <video>/<frame>.png index PNGs; by default exactly the DAVIS toolkit's procedure. --use_all_masks
scores objects that appear after the first frame from the frame after their first mask (as cutie/eval.py does
with use_all_masks) and ignores predictions on frames without ground truth (sparse annotation). SA-V layout
(<video>/<object>/<frame>.png, detected from the folders): per-object J&F over the annotated frames, as SA-V's
evaluator. Prints the tables and what could not be scored, writes them as CSV (default: beside the predictions)
and, as the last line, one JSON object with the headline numbers as fractions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cutie.metrics import evaluate_folders, evaluate_sav_folders, is_sav_layout
from cutie.metrics.davis import list_sequences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt_path", required=True, help="ground-truth folder: <video>/<frame>.png")
    parser.add_argument("--pred_path", required=True, help="prediction folder: <video>/<frame>.png")
    parser.add_argument("--subset", default=None, help="file of sequence names (default: all in gt_path)")
    parser.add_argument("--csv_dir", default=None, help="where to write the CSV tables (default: pred_path)")
    parser.add_argument("--split", default="val", help="name used in the table titles and CSV file names")
    parser.add_argument(
        "--use_all_masks",
        action="store_true",
        help="DAVIS layout: score objects that appear later after their first mask; sparse ground truth allowed",
    )
    args = parser.parse_args(argv)

    try:
        sequences = list_sequences(_dir(args.gt_path), args.subset)
        if is_sav_layout(args.gt_path, sequences):
            report = evaluate_sav_folders(args.gt_path, args.pred_path, args.subset, progress=True)
        else:
            report = evaluate_folders(
                args.gt_path,
                args.pred_path,
                args.subset,
                progress=True,
                late_objects=args.use_all_masks,
                extra_frames_ok=args.use_all_masks,
            )
        tables = report.format_tables(args.split)
        report.write_csv(args.csv_dir or args.pred_path, args.split)
    except (OSError, ValueError) as err:  # ValueError covers a name escaping its folder; OSError unreadable or
        # unwritable files (a --csv_dir that is a file, a planted symlink the atomic writer refuses)
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    print(tables)
    summary = report.summary()
    print(json.dumps({k: round(summary[k], 6) for k in ("J&F-Mean", "J-Mean", "F-Mean")}))
    return 0


def _one_line(err: Exception) -> str:
    """An OSError's text without the "[Errno N]" prefix, and with its path (the file system's errors keep it only as
    an attribute: "[Errno 17] File exists: '...'")."""
    if not isinstance(err, OSError) or not err.strerror:
        return str(err)
    if err.filename is not None and str(err.filename) not in err.strerror:
        return f"{err.filename}: {err.strerror}"
    return err.strerror


def _dir(path: str) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"ground-truth folder {root} not found")
    return root


if __name__ == "__main__":
    sys.exit(main())

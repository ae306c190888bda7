#!/usr/bin/env python
"""Write the empty-mask lists (frames whose mask is all zero) for the video datasets a data config uses.

    python scripts/find_empty_masks.py --data mega [--data_root data_links] [--out cache/empty_masks] [--workers N]

Writes <out>/<DATASET>.txt (default: the path data.vos_datasets.<DATASET>.empty_masks names, i.e.
${cache_root}/empty_masks/<DATASET>.txt). Format: cutie/dataprep/empty_masks.py. Optional for training: the lists
only spare the loader from drawing clips that start on an empty frame. Exit code 1 if a dataset is missing or
has unreadable masks (named, with the fix; its list is not written, the other datasets' lists are), or if a
symlink sits below cache_root (or --out) on the way to a list: nothing is written through it (cache_root and --out
themselves may be links).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cutie.config.typed import ConfigError
from cutie.data.index.datasets import DataValidationError
from cutie.dataprep.config import load_train_config, resolve_path
from cutie.dataprep.empty_masks import MaskReadError, report_root, scan, write
from cutie.utils.cli import run_reporting_errors
from cutie.utils.paths import PathEscapeError, check_no_symlink_inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="base", help="data config: base, with-mose, mega, tiny, tiny-mega, ...")
    parser.add_argument("--data_root", default=None, help="overrides the config's data_root")
    parser.add_argument("--cache_root", default=None, help="overrides the config's cache_root")
    parser.add_argument("--out", type=Path, default=None, help="folder for <DATASET>.txt (default: from config)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    overrides = [f"data={args.data}"]
    overrides += [f"data_root={args.data_root}"] if args.data_root else []
    overrides += [f"cache_root={args.cache_root}"] if args.cache_root else []
    cfg = load_train_config(overrides)
    data_root = resolve_path(cfg.run.data_root)
    cache_root = resolve_path(cfg.run.cache_root)
    status = 0
    for name in cfg.data.main_training.datasets:
        d = cfg.data.vos_datasets[name]
        target = args.out / f"{name}.txt" if args.out else resolve_path(d.empty_masks)
        root = report_root(target, cache_root, args.out)
        try:
            check_no_symlink_inside(root, target)  # before the scan: a refused target would waste it
        except PathEscapeError as e:
            print(f"error: {name}: cannot write {target}: {e}", file=sys.stderr)
            status = 1
            continue
        try:
            lst = scan(name, data_root / d.mask_directory, args.workers)
        except (FileNotFoundError, MaskReadError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
            continue
        try:
            write(lst, target, root)
        except (OSError, PathEscapeError) as e:  # e.g. --out not writable, disk full, a symlink at the target
            print(f"error: {name}: cannot write {target}: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{name}: {lst.videos} videos, {lst.frames} masks, {len(lst.empty)} empty -> {target}")
    return status


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, {ConfigError: "configuration error", DataValidationError: "data error"}))

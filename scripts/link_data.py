#!/usr/bin/env python
"""Link the datasets into data_links/ (the default data_root) and report what a data config still needs.

    python scripts/link_data.py                      # data_links/DAVIS -> ../DAVIS, ... (folders beside the repo)
    python scripts/link_data.py --data mega --BURST /data/burst --OVIS-VOS-train /data/ovis-vos
    python scripts/link_data.py --data tiny --source_root /tmp/tiny   # the generated tiny dataset

Links: DAVIS, YouTube, BURST, MOSE, static, OVIS-VOS-train (the seed layout's top-level folders), SA-V, SA-1B. A name
given as --NAME PATH links to PATH; the others to <source_root>/NAME when that folder exists. Real folders in
data_links/ are never touched. Exit code: 0 if every dataset the chosen config needs is present, else 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cutie.config.typed import ConfigError
from cutie.data.index.datasets import DataValidationError
from cutie.dataprep.config import REPO_ROOT, load_train_config, needed_datasets
from cutie.dataprep.links import TOP_LEVEL, LinkError, make_links, presence
from cutie.utils.cli import run_reporting_errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="base", help="data config to check: base, with-mose, mega, tiny, ...")
    parser.add_argument("--links_dir", type=Path, default=REPO_ROOT / "data_links", help="where the links go")
    parser.add_argument(
        "--source_root", type=Path, default=REPO_ROOT.parent, help="folder holding the datasets (default: ..)"
    )
    parser.add_argument("--absolute", action="store_true", help="write absolute link targets (default: relative)")
    parser.add_argument("--check_only", action="store_true", help="only report, create no links")
    for name in TOP_LEVEL:
        parser.add_argument(f"--{name}", type=Path, default=None, metavar="PATH", help=f"where {name} is")
    args = parser.parse_args(argv)

    if not args.check_only:
        given = {name: getattr(args, name.replace("-", "_")) for name in TOP_LEVEL}
        sources = {name: given[name] or args.source_root / name for name in TOP_LEVEL}
        for r in make_links(args.links_dir, sources, relative=not args.absolute):
            note = f" ({r.reason})" if r.reason else ""
            print(f"{r.action:9s} {r.link} -> {r.target}{note}")

    cfg = load_train_config([f"data={args.data}"])
    report = presence(needed_datasets(cfg), args.links_dir)
    print(f"\ndata={args.data} needs {len(report)} datasets under {args.links_dir}:")
    for p in report:
        if p.present:
            print(f"  present  {p.name:12s} ({p.stage}): {', '.join(str(c) for c in p.checked)}")
        else:
            looked = ", ".join(str(m) for m in p.missing)
            print(f"  MISSING  {p.name:12s} ({p.stage}): looked at {looked}\n           fix: {p.fix}")
    missing = [p.name for p in report if not p.present]
    if missing:
        print(f"\n{len(missing)} missing: {', '.join(missing)}")
        return 1
    print("\nall present")
    return 0


if __name__ == "__main__":
    sys.exit(
        run_reporting_errors(
            main, {ConfigError: "configuration error", DataValidationError: "data error", LinkError: "links error"}
        )
    )

#!/usr/bin/env python
"""Compares our network (and, for inference fixtures, our inference procedure) with the official fixtures.

    python scripts/check_reference.py ../shared/reference/*.pt

Training fixtures (format cutie-reference-v1): relative error ||ours - ref|| / ||ref|| of every output and of
every recorded submodule call. Inference fixtures (cutie-inference-reference-v1): worst absolute error of the
per-frame probabilities. The weight rule is read from the folder of each fixture (`--reference-dir` to point
elsewhere). Exits 1 if any error exceeds 1e-4 or if any file cannot be checked (missing, unreadable, unknown
format): a check that could not run is never a success.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cutie.testing.reference_files import load_reference
from cutie.testing.reference_inference import FIXTURE_FORMAT as INFERENCE_FORMAT
from cutie.testing.reference_inference import check_inference_fixture
from cutie.testing.reference_model import TOLERANCE, TRAINING_FORMAT, check_training_fixture


def check_training(path: Path, fixture: dict, reference_dir: Path) -> float:
    report = check_training_fixture(fixture, reference_dir)
    print(f"{path.name}: model={fixture['model']} overrides={fixture.get('overrides')}")
    for name, err in report.outputs.items():
        print(f"  {name:32s} rel. error {err:.3e}{'  FAIL' if err > TOLERANCE else ''}")
    name, err = report.worst_module
    print(
        f"  module calls: {len(report.modules)} outputs checked, worst {err:.3e} ({name})"
        + (f"; skipped {', '.join(report.skipped_modules)}" if report.skipped_modules else "")
    )
    for k, v in report.modules.items():
        if v > TOLERANCE:
            print(f"    module mismatch {k}: {v:.3e}")
    name, worst = report.worst
    print(f"  worst output: {worst:.3e} ({name})")
    return max(worst, err)


def check_inference(path: Path, fixture: dict, reference_dir: Path) -> float:
    worst = check_inference_fixture(fixture, reference_dir)
    print(f"{path.name}: model={fixture['model']} worst abs. error of the probabilities {worst:.3e}")
    return worst


def check_one(path: Path, reference_dir: Path | None) -> float | None:
    """The worst error of one fixture, or None (with the reason printed) if it cannot be checked."""
    if not path.is_file():
        print(f"{path}: no such file", file=sys.stderr)
        return None
    try:
        fixture = load_reference(path)
    except Exception as e:  # noqa: BLE001 (any unreadable file is reported the same way)
        print(f"{path}: cannot be read ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    folder = reference_dir or path.parent
    kind = fixture.get("format") if isinstance(fixture, dict) else None
    if kind == INFERENCE_FORMAT:
        return check_inference(path, fixture, folder)
    if kind == TRAINING_FORMAT:
        return check_training(path, fixture, folder)
    print(
        f"{path}: unknown fixture format {kind!r} (expected {TRAINING_FORMAT} or {INFERENCE_FORMAT})", file=sys.stderr
    )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="+", type=Path, help="fixture_*.pt / inference_*.pt files")
    parser.add_argument("--reference-dir", type=Path, default=None, help="folder of weights_rule.py")
    args = parser.parse_args(argv)
    torch.manual_seed(0)  # irrelevant for the fixtures (all frames are references), kept deterministic
    failed = unchecked = 0
    for path in args.fixtures:
        worst = check_one(path, args.reference_dir)
        if worst is None:
            unchecked += 1
        elif not worst <= TOLERANCE:  # NaN fails too
            failed += 1
    checked = len(args.fixtures) - unchecked
    if failed or unchecked:
        print(f"FAIL: {failed} beyond {TOLERANCE:g}, {unchecked} could not be checked, of {len(args.fixtures)}")
        return 1
    print(f"OK: {checked} fixture(s), every error within {TOLERANCE:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Compares our network (and, for inference fixtures, our inference procedure) with the official fixtures.

    python scripts/check_reference.py ../shared/reference/fixture_small_96x96_t3_o2.pt [more fixtures...]

Training fixtures (format cutie-reference-v1): relative error ||ours - ref|| / ||ref|| of every output and of
every recorded submodule call. Inference fixtures (cutie-inference-reference-v1): worst absolute error of the
per-frame probabilities. Exits 1 if any error exceeds 1e-4.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO.parent / "shared" / "reference"
INFERENCE_FORMAT = "cutie-inference-reference-v1"


def check_training(path: Path, fixture: dict) -> float:
    from cutie.model.reference_check import TOLERANCE, check_training_fixture

    report = check_training_fixture(fixture, REFERENCE_DIR)
    print(f"{path.name}: model={fixture['model']} overrides={fixture.get('overrides')}")
    for name, err in report.outputs.items():
        print(f"  {name:32s} rel. error {err:.3e}{'  FAIL' if err > TOLERANCE else ''}")
    bad_modules = {k: v for k, v in report.modules.items() if v > TOLERANCE}
    name, err = report.worst_module
    print(
        f"  module calls: {len(report.modules)} outputs checked, worst {err:.3e} ({name})"
        + (f"; skipped {', '.join(report.skipped_modules)}" if report.skipped_modules else "")
    )
    for k, v in bad_modules.items():
        print(f"    module mismatch {k}: {v:.3e}")
    name, worst = report.worst
    print(f"  worst output: {worst:.3e} ({name})")
    return worst


def check_inference(path: Path, fixture: dict) -> float | None:
    try:
        module = importlib.import_module("cutie.inference.reference_check")
    except ModuleNotFoundError:
        print(f"{path.name}: inference fixtures: not supported yet")
        return None
    worst = module.check_inference_fixture(fixture, REPO)
    print(f"{path.name}: model={fixture['model']} worst abs. error of the probabilities {worst:.3e}")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="+", type=Path, help="fixture_*.pt / inference_*.pt files")
    args = parser.parse_args(argv)
    torch.manual_seed(0)  # irrelevant for the fixtures (all frames are references), kept deterministic
    failed = False
    for path in args.fixtures:
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            failed = True
            continue
        fixture = torch.load(path, weights_only=False, map_location="cpu")
        if fixture.get("format") == INFERENCE_FORMAT:
            worst = check_inference(path, fixture)
        else:
            worst = check_training(path, fixture)
        failed |= worst is not None and worst > 1e-4
    print("FAIL" if failed else "OK: every error within 1e-4")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

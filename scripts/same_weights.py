#!/usr/bin/env python
"""Check that weights files hold bit-identical tensors (same keys, dtypes, shapes and values).

    python scripts/same_weights.py REFERENCE OTHER [OTHER ...]

Exit 0 when every OTHER equals REFERENCE; 1 when one differs (one line per file: how many tensors differ and a
few of their names); 2 when a file cannot be read. Used by scripts/docker_smoke.sh to compare the two-container
run with the one-container run; plain state dicts and full checkpoints (their 'weights') both work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cutie.model.weights import StateDict, WeightsError, read_weights_file
from cutie.utils.cli import run_reporting_errors


def differences(a: StateDict, b: StateDict) -> list[str]:
    """Names of the entries that are not bit-identical: missing on one side, or another dtype, shape or value."""
    names = sorted(a.keys() | b.keys())
    # torch.equal is False for differing shapes; the dtype check keeps a float64 copy from passing as equal.
    return [k for k in names if k not in a or k not in b or a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path)
    parser.add_argument("others", type=Path, nargs="+")
    args = parser.parse_args(argv)
    ref = read_weights_file(args.reference)
    status = 0
    for path in args.others:
        differ = differences(ref, read_weights_file(path))
        if differ:
            print(f"{path}: {len(differ)} of {len(ref)} tensors differ from {args.reference}, e.g. {differ[:3]}")
            status = 1
        else:
            print(f"{path}: all {len(ref)} tensors bit-identical to {args.reference}")
    return status


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, {FileNotFoundError: "weights file", WeightsError: "weights file"}))

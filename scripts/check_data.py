#!/usr/bin/env python
"""Check that the datasets a training config needs are present and readable, before training.

    python scripts/check_data.py data=base|with-mose|mega|tiny|tiny-mega [data_root=...] [cache_root=...] ...

Takes the same Hydra overrides as cutie/train.py. Prints one row per dataset (dataset, path, found, videos,
frames, masks, problems with their fixes), then how each video dataset is annotated (dense and sparse videos,
their annotation steps, excluded videos, videos with partial labels), each bad file with its fix and each mask
left out of training (wrong_size_masks=skip), and exits 1 if training would stop on the data, else 0. Every
frame's JPEG and PNG is checked (header, size, mask mode, JPEG end marker, complete PNG data), in parallel;
results of good files are cached in <cache_root>/data_check/, so a second check of an unchanged dataset reads no
image.
"""

from __future__ import annotations

import sys

from cutie.config.typed import ConfigError
from cutie.data.index.datasets import DataValidationError
from cutie.dataprep.check import check
from cutie.dataprep.config import load_train_config
from cutie.utils.cli import run_reporting_errors


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    bad = [a for a in args if "=" not in a]
    if bad:
        print(f"error: expected Hydra overrides key=value, got {' '.join(bad)} (e.g. data=tiny)", file=sys.stderr)
        return 2
    result = check(load_train_config(args))
    print(result.render())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, {ConfigError: "configuration error", DataValidationError: "data error"}))

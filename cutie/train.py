"""Entry point: `torchrun --nproc_per_node=N cutie/train.py exp_id=ID model=small|base data=base|with-mose|mega`
(or `python cutie/train.py ...` for one process). See README.md for every option.

Errors reach the user as one line (or a short list) with the fix, and an exit code:
  0 done; 1 unexpected error; 2 a configuration, data, weights or checkpoint problem found before the first step;
  3 stopped on request (SIGTERM/SIGINT, non-finite losses, stop_at_iteration) after saving a checkpoint;
  4 too many unreadable samples (a checkpoint was saved); 5 out of disk space (the previous checkpoint is intact);
  130 interrupted. HYDRA_FULL_ERROR=1 shows the full traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys

import hydra
from omegaconf import DictConfig

from cutie.data.index import DataValidationError
from cutie.model.weights import WeightsError
from cutie.training.checkpoint import CheckpointError
from cutie.training.plan import ConfigError
from cutie.training.run import run_training
from cutie.utils.atomic import DiskFullError

EXIT_ERROR, EXIT_CONFIG, EXIT_DISK_FULL, EXIT_INTERRUPTED = 1, 2, 5, 130


def _fail(prefix: str, error: object, code: int) -> None:
    print(f"{prefix}: {error}", file=sys.stderr)
    raise SystemExit(code) from None


@hydra.main(version_base="1.3", config_path="config", config_name="train_config")
def main(cfg: DictConfig) -> None:
    try:
        run_training(cfg)
    except SystemExit:
        raise
    except BaseException as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(e, ConfigError):
            _fail("configuration error", e, EXIT_CONFIG)
        if isinstance(e, DataValidationError):
            _fail("data error", e, EXIT_CONFIG)
        if isinstance(e, CheckpointError):
            _fail("checkpoint error", e, EXIT_CONFIG)
        if isinstance(e, WeightsError):
            _fail("weights error", e, EXIT_CONFIG)
        if isinstance(e, DiskFullError) or (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            _fail("out of disk space", f"{e.strerror or e}; the previous checkpoint is intact", EXIT_DISK_FULL)
        if isinstance(e, KeyboardInterrupt):
            _fail("interrupted", "second Ctrl-C: stopped without saving", EXIT_INTERRUPTED)
        _fail(
            "error",
            f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]} (set HYDRA_FULL_ERROR=1 for the traceback)",
            EXIT_ERROR,
        )


if __name__ == "__main__":
    main()

"""Entry point: `torchrun --nproc_per_node=N cutie/train.py exp_id=ID model=small|base data=base|with-mose|mega`
(or `python cutie/train.py ...` for one process). See README.md for every option."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cutie.data.index import DataValidationError
from cutie.training.plan import ConfigError
from cutie.training.run import run_training


@hydra.main(version_base="1.3", config_path="config", config_name="train_config")
def main(cfg: DictConfig) -> None:
    try:
        run_training(cfg)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except DataValidationError as e:
        print(f"data error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

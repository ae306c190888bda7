"""Entry point: `torchrun --nproc_per_node=N cutie/train.py exp_id=ID model=small|base data=base|with-mose|mega`
(or `python cutie/train.py ...` for one process, or `srun python cutie/train.py ...`, one task per GPU, on SLURM).
See README.md for every option.

The configuration is parsed once, here, into the typed TrainConfig; everything below takes the typed objects.
Errors reach the user as one line (or a short list) with the fix, and an exit code:
  0 done; 1 unexpected error; 2 a configuration, data, weights, checkpoint or run-folder (a symlink inside)
  problem found before the first step, or a file of the run folder that cannot be written during the run (a
  checkpoint of the completed steps is saved first: fix it and relaunch to resume), or a step that does not fit
  the GPU's memory (the line names max_batch_per_gpu, which keeps the global batch; the relaunch resumes);
  3 stopped on request (SIGTERM/SIGINT/SIGUSR1, non-finite losses, stop_at_iteration) after saving a checkpoint,
    or by a signal during the start-up (nothing to save yet; the data check's progress is cached);
  4 too many unreadable samples (a checkpoint was saved); 5 out of disk space (the previous checkpoint is intact);
  130 interrupted. HYDRA_FULL_ERROR=1 (or CUTIE_DEBUG=1) shows the full traceback instead.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cutie.config.overrides import check_overrides
from cutie.config.train import parse_train_config
from cutie.config.typed import ConfigError
from cutie.data.index.datasets import DataValidationError
from cutie.data.loaders.base import LoaderFailure
from cutie.model.weights import WeightsError
from cutie.training.checkpoint import CheckpointError
from cutie.training.out_of_memory import OutOfDeviceMemory
from cutie.training.run import run_training
from cutie.utils.atomic import UnsafePathError
from cutie.utils.cli import run_reporting_errors
from cutie.utils.dist import DeviceError
from cutie.utils.paths import PathEscapeError

_INPUT_ERRORS = {
    ConfigError: "configuration error",
    DataValidationError: "data error",
    CheckpointError: "checkpoint error",
    WeightsError: "weights error",
    DeviceError: "device error",
    PathEscapeError: "path error",
    UnsafePathError: "path error",  # a symlink met where the run writes (planted after the start-up check)
    OutOfDeviceMemory: "out of memory",  # the step does not fit the GPU: names max_batch_per_gpu
    LoaderFailure: "loader error",  # a loader worker died (host memory, usually): after a checkpoint
    OSError: "file error",  # a file the run cannot write (after the checkpoint of the steps done, if any)
}


@hydra.main(version_base="1.3", config_path="config", config_name="train_config")
def main(cfg: DictConfig) -> None:
    overrides = list(HydraConfig.get().overrides.task)  # to name the ones that have no effect in this run
    run_reporting_errors(lambda: run_training(parse_train_config(cfg, overrides)), _INPUT_ERRORS)


if __name__ == "__main__":
    # A bad override (unknown key or group option, bad syntax) as one line and exit 2, before Hydra reports it
    run_reporting_errors(lambda: check_overrides("train_config", sys.argv[1:]), _INPUT_ERRORS)
    main()

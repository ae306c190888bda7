"""Entry point: `python cutie/eval.py weights=PATH dataset=d17-val|y19-val|mose-val|tiny-val|custom|sav-val|
sav-test [model=small|base] [mem_every=N] [data_root=DIR] [exp_id=ID]`. Writes palette PNGs under
output/<exp_id>/eval/<dataset>/Annotations/ (SA-V: one 0/1 PNG per object and frame), reports frames/s and peak
memory and, where there is ground truth to score, the J&F tables (DAVIS; SA-V per object) with what could not be
scored; the last line printed is one JSON object. See cutie/config/eval_config.yaml."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cutie.config.evaluation import parse_eval_config
from cutie.config.overrides import check_overrides
from cutie.config.typed import ConfigError
from cutie.inference.dataset_eval import run_evaluation
from cutie.inference.runner import InferenceOutOfMemory
from cutie.model.weights import WeightsError
from cutie.utils.atomic import UnsafePathError
from cutie.utils.cli import run_reporting_errors
from cutie.utils.dist import DeviceError
from cutie.utils.paths import PathEscapeError

# Problems with what the user handed over; ValueError covers unreadable or inconsistent masks and frames
# (their messages name the file).
_INPUT_ERRORS = {
    ConfigError: "configuration error",
    DeviceError: "device error",
    WeightsError: "weights error",
    PathEscapeError: "path error",
    UnsafePathError: "path error",  # a symlink met where the run writes (planted after the start-up check)
    InferenceOutOfMemory: "out of memory",  # a frame that does not fit the GPU: names the options that help
    OSError: "file error",
    ValueError: "data error",
}


@hydra.main(version_base="1.3", config_path="config", config_name="eval_config")
def main(cfg: DictConfig) -> None:
    # The config is parsed once, here; everything below takes the typed EvalConfig.
    overrides = list(HydraConfig.get().overrides.task)  # to name the ones that have no effect on the dataset
    run_reporting_errors(lambda: run_evaluation(parse_eval_config(cfg, overrides)), _INPUT_ERRORS)


if __name__ == "__main__":
    # A bad override (unknown key or group option, bad syntax) as one line and exit 2, before Hydra reports it
    run_reporting_errors(lambda: check_overrides("eval_config", sys.argv[1:]), _INPUT_ERRORS)
    main()

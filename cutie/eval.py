"""Entry point: `python cutie/eval.py weights=PATH dataset=d17-val|y19-val|mose-val|tiny-val|custom
[model=small|base] [mem_every=N] [data_root=DIR] [exp_id=ID]`. Writes palette PNGs under
output/<exp_id>/eval/<dataset>/Annotations/, reports frames/s and peak memory and, where every frame has
ground truth, the DAVIS J&F tables; the last line printed is one JSON object. See cutie/config/eval_config.yaml."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from cutie.inference.dataset_eval import EvalConfigError, run_evaluation


@hydra.main(version_base="1.3", config_path="config", config_name="eval_config")
def main(cfg: DictConfig) -> None:
    try:
        run_evaluation(cfg)
    except (EvalConfigError, FileNotFoundError) as e:
        print(f"configuration error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

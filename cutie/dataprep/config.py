"""Compose the training configuration (cutie/config/train_config.yaml) from Hydra-style overrides.

The data tools read the same config as training, so `data=... data_root=...` mean exactly what they mean for
cutie/train.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from cutie.config.overrides import compose_config
from cutie.config.train import TrainConfig, parse_train_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
REPO_ROOT = CONFIG_DIR.parents[1]


def compose_train_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The composed train_config with `overrides` (e.g. ["data=tiny", "data_root=/tmp/tiny"]) applied; a bad
    override (unknown group option, unknown key) is a ConfigError naming it, as for cutie/train.py."""
    return compose_config("train_config", overrides)


def load_train_config(overrides: Sequence[str] = ()) -> TrainConfig:
    """The composed train_config with `overrides`, parsed into the typed TrainConfig (as cutie/train.py does)."""
    return parse_train_config(compose_train_config(overrides))


def resolve_path(path: str | os.PathLike, base: Path | None = None) -> Path:
    """A config path as training sees it: relative paths hang off the working directory (Hydra does not chdir)."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (Path.cwd() if base is None else base) / p


@dataclass(frozen=True)
class DatasetPaths:
    """The paths one dataset of a data config needs, relative to data_root as written in datasets.yaml."""

    name: str
    stage: str  # pre_training | main_training | validation
    paths: dict[str, str]  # role (directory, image_directory, mask_directory, subset) -> relative path


def needed_datasets(cfg: TrainConfig) -> list[DatasetPaths]:
    """Every dataset the config's stages use (plus the validation set), with the paths they need."""
    data = cfg.data
    out: list[DatasetPaths] = []
    for name in data.pre_training.datasets:
        out.append(DatasetPaths(name, "pre_training", {"directory": data.image_datasets[name].directory}))
    for name in data.main_training.datasets:
        d = data.vos_datasets[name]
        paths = {"image_directory": d.image_directory, "mask_directory": d.mask_directory}
        if d.subset:
            paths["subset"] = d.subset
        out.append(DatasetPaths(name, "main_training", paths))
    val = data.val_dataset
    if val is not None:
        paths = {"image_directory": val.image_directory, "mask_directory": val.mask_directory}
        if val.subset:
            paths["subset"] = val.subset
        out.append(DatasetPaths(val.name, "validation", paths))
    return out

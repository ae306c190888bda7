"""The evaluation configuration (cutie/config/eval_config.yaml) as frozen, typed objects, parsed once in
cutie/eval.py. Official names and defaults; unknown keys are errors naming the key."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig

from cutie.config.model import ModelSpec
from cutie.config.train import to_plain
from cutie.config.typed import ConfigError, parse


@dataclass(frozen=True)
class EvalDataset:
    """One entry of `datasets` (a DAVIS- or SA-V-layout folder and how to run on it)."""

    image_directory: str | None
    mask_directory: str | None
    subset: str | None = None  # text file of the videos to evaluate
    json_directory: str | None = None  # YouTube-VOS meta.json: which frames to save
    size: int = -1  # shorter side for the network (-1: as stored)
    save_all: bool = True
    use_all_masks: bool = False  # objects first annotated after frame 0 are added when they appear
    mem_every: int = 5
    use_long_term: bool = False
    evaluate: bool | Literal["auto"] = "auto"  # J&F after inference (auto: when the ground truth can be scored)
    layout: Literal["davis", "sav"] = "davis"  # <video>/<frame>.png index masks, or SA-V's <video>/<object>/
    wrong_size_masks: Literal["error", "skip"] = "error"  # skip: such a mask is left out, its frame unannotated


@dataclass(frozen=True)
class LongTermConfig:
    count_usage: bool
    max_mem_frames: int
    min_mem_frames: int
    num_prototypes: int
    max_num_tokens: int
    buffer_tokens: int


# Top-level keys that, when set, override the chosen dataset's entry.
OVERRIDABLE = tuple(f.name for f in dataclasses.fields(EvalDataset))


@dataclass(frozen=True)
class EvalConfig:
    exp_id: str
    output_root: str
    data_root: str  # read through the datasets' interpolations
    weights: str | None
    dataset: str
    device: Literal["auto", "cpu", "cuda"]
    amp: bool
    max_videos: int | None
    flip_aug: bool
    max_internal_size: int
    max_mem_frames: int
    top_k: int | None
    stagger_updates: int
    chunk_size: int
    long_term: LongTermConfig
    datasets: Mapping[str, EvalDataset]
    model: ModelSpec
    # overrides of the chosen dataset's entry (null: the entry's value)
    image_directory: str | None = None
    mask_directory: str | None = None
    subset: str | None = None
    json_directory: str | None = None
    size: int | None = None
    save_all: bool | None = None
    use_all_masks: bool | None = None
    mem_every: int | None = None
    use_long_term: bool | None = None
    evaluate: bool | Literal["auto"] | None = None
    layout: Literal["davis", "sav"] | None = None
    wrong_size_masks: Literal["error", "skip"] | None = None

    def chosen_dataset(self) -> EvalDataset:
        """The `dataset=` entry with the non-null top-level overrides applied."""
        if self.dataset not in self.datasets:
            raise ConfigError(f"`dataset`: {self.dataset!r} is unknown; choose one of: {', '.join(self.datasets)}")
        entry = self.datasets[self.dataset]
        changes = {k: getattr(self, k) for k in OVERRIDABLE if getattr(self, k) is not None}
        return dataclasses.replace(entry, **changes)


def parse_eval_config(cfg: DictConfig | Mapping[str, Any]) -> EvalConfig:
    """The one parse of the evaluation configuration (Hydra's composed config, or the same as a mapping)."""
    plain = to_plain(cfg)
    plain.pop("hydra", None)
    if "model" not in plain:
        raise ConfigError("`model`: missing from the configuration (model=small or model=base)")
    spec = ModelSpec.from_config(plain.pop("model"))
    return parse(EvalConfig, plain, "", given={"model": spec})

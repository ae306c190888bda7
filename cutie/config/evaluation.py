"""The evaluation configuration (cutie/config/eval_config.yaml) as frozen, typed objects, parsed once in
cutie/eval.py. Official names and defaults; unknown keys are errors naming the key."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import DictConfig

from cutie.config.model import ModelSpec
from cutie.config.train import check_exp_id, check_paths_not_empty, to_plain
from cutie.config.typed import ConfigError, FieldError, parse


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

    def __post_init__(self) -> None:
        _check_mem_every(self.mem_every)
        _check_size("size", self.size, "as stored")


def _check_mem_every(value: int | None) -> None:
    if value is not None and value < 1:
        raise FieldError("mem_every", f"must be >= 1 (a memory frame every N frames), got {value}")


def _check_size(key: str, value: int | None, off: str) -> None:
    """A shorter-side size: -1 (off) or at least the network's stride of 16 (0 would read as 'off' silently)."""
    if value is not None and value != -1 and value < 16:
        raise FieldError(key, f"must be -1 ({off}) or >= 16 pixels, got {value}")


@dataclass(frozen=True)
class LongTermConfig:
    count_usage: bool
    max_mem_frames: int
    min_mem_frames: int
    num_prototypes: int
    max_num_tokens: int
    buffer_tokens: int

    def __post_init__(self) -> None:
        if not 2 <= self.min_mem_frames < self.max_mem_frames:
            raise FieldError(
                "min_mem_frames",
                f"must be >= 2 and below long_term.max_mem_frames ({self.max_mem_frames}), got {self.min_mem_frames}",
            )
        if self.num_prototypes < 1:
            raise FieldError("num_prototypes", f"must be >= 1, got {self.num_prototypes}")
        if self.buffer_tokens < 0:
            raise FieldError("buffer_tokens", f"must be >= 0, got {self.buffer_tokens}")
        if self.max_num_tokens <= self.num_prototypes + self.buffer_tokens:
            raise FieldError(
                "max_num_tokens",
                f"must exceed num_prototypes + buffer_tokens ({self.num_prototypes} + {self.buffer_tokens}), "
                f"got {self.max_num_tokens}",
            )


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
    # Command-line overrides that have no effect on this dataset (long_term.* without long-term memory), logged.
    notes: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self) -> None:
        check_exp_id(self.exp_id)
        paths = ("output_root", "data_root", "weights", "image_directory", "mask_directory", "subset", "json_directory")
        check_paths_not_empty(self, paths)
        _check_mem_every(self.mem_every)
        _check_size("size", self.size, "as stored")
        _check_size("max_internal_size", self.max_internal_size, "no limit")
        if self.max_mem_frames < 2:
            raise FieldError("max_mem_frames", f"must be >= 2 (the first frame + 1), got {self.max_mem_frames}")
        if self.top_k is not None and self.top_k < 1:  # top_k 0 would give every memory read zero weight
            raise FieldError("top_k", f"must be >= 1 or null (all), got {self.top_k}")
        if self.stagger_updates < 1:
            raise FieldError(
                "stagger_updates", f"must be >= 1 (sensory updates between memory frames), got {self.stagger_updates}"
            )
        if self.chunk_size != -1 and self.chunk_size < 1:
            raise FieldError("chunk_size", f"must be -1 (all objects together) or >= 1, got {self.chunk_size}")
        if self.max_videos is not None and self.max_videos < 1:
            raise FieldError("max_videos", f"must be >= 1 or null (all), got {self.max_videos}")

    def chosen_dataset(self) -> EvalDataset:
        """The `dataset=` entry with the non-null top-level overrides applied."""
        if self.dataset not in self.datasets:
            raise ConfigError(f"`dataset`: {self.dataset!r} is unknown; choose one of: {', '.join(self.datasets)}")
        entry = self.datasets[self.dataset]
        changes = {k: getattr(self, k) for k in OVERRIDABLE if getattr(self, k) is not None}
        return dataclasses.replace(entry, **changes)


def parse_eval_config(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] = ()) -> EvalConfig:
    """The one parse of the evaluation configuration (Hydra's composed config, or the same as a mapping).
    `overrides`: the command line's, to name those that have no effect (EvalConfig.notes)."""
    plain = to_plain(cfg)
    plain.pop("hydra", None)
    if "model" not in plain:
        raise ConfigError("`model`: missing from the configuration (model=small or model=base)")
    spec = ModelSpec.from_config(plain.pop("model"))
    typed = parse(EvalConfig, plain, "", given={"model": spec, "notes": ()})  # `+notes=` is an unknown option
    return dataclasses.replace(typed, notes=_ineffective(typed, overrides))


def _ineffective(cfg: EvalConfig, overrides: Sequence[str]) -> tuple[str, ...]:
    """long_term.* overrides when the chosen dataset runs without long-term memory (an unknown dataset is
    reported by the run itself)."""
    if cfg.dataset not in cfg.datasets or cfg.chosen_dataset().use_long_term:
        return ()
    return tuple(
        f"`{line}` has no effect: dataset={cfg.dataset} runs without long-term memory (add use_long_term=true)"
        for line in overrides
        if line.split("=", 1)[0].lstrip("+~").startswith("long_term.")
    )

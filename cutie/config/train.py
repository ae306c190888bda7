"""The training configuration as frozen, typed objects, one per concern, parsed once in the entry point.

The YAML keeps the official flat interface (`exp_id=... num_workers=8 main_training.learning_rate=...`); the
parse sorts the top-level keys into their concern (run, runtime, logging), reads each stage, the data catalogue
and the model, checks every value, and refuses unknown keys (`+some.unknown=1` and typos are errors naming the
key). Nothing below the entry points reads a DictConfig.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from cutie.config.model import ModelSpec
from cutie.config.typed import ConfigError, FieldError, parse

STAGES = ("pre_training", "main_training")  # the one list of stage names, in training order


def data_groups() -> list[str]:
    """The data groups (cutie/config/data/*.yaml but the catalogue datasets.yaml), for error messages."""
    folder = Path(__file__).with_name("data")
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != "datasets")


def check_exp_id(exp_id: str) -> None:
    """exp_id names one folder under output_root (weights files are named after it too): `a/b` or `..` would
    put the run elsewhere, and an empty one would make output_root itself the run directory."""
    if exp_id in ("", ".", "..") or any(c in exp_id for c in "/\\"):
        raise FieldError("exp_id", f"must be a plain folder name (no '/', not '.' or '..'), got {exp_id!r}")


def check_paths_not_empty(obj: object, keys: tuple[str, ...]) -> None:
    """An empty path (`weights=$W` with W unset) would mean 'none' or the working folder without a word."""
    for key in keys:
        if getattr(obj, key) == "":
            raise FieldError(key, f"is empty; give a path ({key}=PATH) or null where it is optional")


@dataclass(frozen=True)
class RunConfig:
    """Which run, and where its inputs and outputs live."""

    exp_id: str
    output_root: str  # the run directory is output_root/exp_id
    data_root: str  # every dataset location hangs off this
    cache_root: str  # derived data (empty-mask lists, the data-check cache)
    weights: str | None  # plain weights file to start from
    checkpoint: str | None  # full checkpoint to resume from (else the newest of exp_id)
    seed: int
    stop_at_iteration: int | None  # simulated preemption, for testing resume

    def __post_init__(self) -> None:
        check_exp_id(self.exp_id)
        check_paths_not_empty(self, ("output_root", "data_root", "cache_root", "weights", "checkpoint"))
        if self.seed < 0:
            raise FieldError("seed", f"must be >= 0 (numpy seeds are non-negative), got {self.seed}")
        if self.stop_at_iteration is not None and self.stop_at_iteration < 1:
            raise FieldError(
                "stop_at_iteration",
                f"must be >= 1 (an iteration of a stage, counted from 1) or null, got {self.stop_at_iteration}",
            )


@dataclass(frozen=True)
class RuntimeConfig:
    """How the run uses the machine; none of these change what a step computes."""

    device: Literal["auto", "cpu", "cuda"]
    loader: Literal["auto", "dali", "torch"]
    num_workers: int
    max_batch_per_gpu: int | None  # gradient accumulation keeps the global batch
    cudnn_benchmark: bool
    compile: bool
    # Layout of the network's 4-D weights and of the frames (cutie/training/memory_format.py); same values.
    memory_format: Literal["contiguous", "channels_last"]
    max_nonfinite_steps: int  # consecutive non-finite losses before the run stops
    max_bad_sample_fraction: float  # corrupt samples tolerated before the run stops

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise FieldError("num_workers", f"must be >= 0, got {self.num_workers}")
        if self.max_batch_per_gpu is not None and self.max_batch_per_gpu <= 0:
            raise FieldError("max_batch_per_gpu", f"must be positive or null, got {self.max_batch_per_gpu}")
        if not 0 <= self.max_bad_sample_fraction <= 1:
            raise FieldError("max_bad_sample_fraction", f"must be within [0, 1], got {self.max_bad_sample_fraction}")
        if self.max_nonfinite_steps < 1:
            raise FieldError("max_nonfinite_steps", f"must be >= 1 (steps in a row), got {self.max_nonfinite_steps}")


@dataclass(frozen=True)
class LoggingConfig:
    """How often the run reports and saves (0 disables an interval)."""

    log_text_interval: int
    log_image_interval: int
    save_weights_interval: int
    save_checkpoint_interval: int
    eval_interval: int

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError(f"`{f.name}`: must be >= 0 (0 disables it), got {getattr(self, f.name)}")


@dataclass(frozen=True)
class StageConfig:
    """One training stage (pre_training or main_training), official names and meanings."""

    name: str
    enabled: bool
    batch_size: int  # global batch, divided by the world size
    amp: bool
    num_iterations: int
    learning_rate: float
    lr_schedule: Literal["constant", "step"]
    lr_schedule_steps: tuple[int, ...]
    lr_schedule_gamma: float
    point_supervision: bool
    train_num_points: int
    oversample_ratio: float
    importance_sample_ratio: float
    clip_grad_norm: float
    weight_decay: float
    embed_weight_decay: float
    backbone_lr_ratio: float
    num_ref_frames: int
    seq_length: int
    num_objects: int
    deep_update_prob: float
    crop_size: tuple[int, int]  # H, W
    # main training only (pre-training draws one static image per clip)
    merge_probability: float = 0.0
    max_skip_schedule: tuple[int, ...] = (5,)
    max_skip_schedule_fraction: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        s = self.name  # parse() puts the stage's name in front of a FieldError's key

        def fail(key: str, msg: str) -> None:
            raise FieldError(key, msg)

        if self.name not in STAGES:
            fail("name", f"must be one of {', '.join(STAGES)}")
        for key in ("batch_size", "num_iterations", "seq_length", "num_objects", "train_num_points"):
            if getattr(self, key) <= 0:
                fail(key, f"must be positive, got {getattr(self, key)}")
        if self.seq_length < 2:
            fail("seq_length", "must be >= 2 (frame 0 gives the masks, later frames are trained on), got 1")
        for key in ("learning_rate", "clip_grad_norm"):  # clip_grad_norm 0 would scale every gradient to 0
            if getattr(self, key) <= 0:
                fail(key, f"must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "embed_weight_decay", "backbone_lr_ratio"):
            if getattr(self, key) < 0:
                fail(key, f"must be >= 0, got {getattr(self, key)}")
        if not 0 < self.lr_schedule_gamma <= 1:
            gamma = self.lr_schedule_gamma
            fail("lr_schedule_gamma", f"must be within (0, 1] (the lr factor at each step), got {gamma}")
        if self.oversample_ratio < 1:
            fail("oversample_ratio", f"must be >= 1 (candidate points per trained point), got {self.oversample_ratio}")
        if not 0 < self.num_ref_frames < self.seq_length:
            fail(
                "num_ref_frames",
                f"must be in [1, seq_length={self.seq_length}), got {self.num_ref_frames} (a clip is the memory "
                f"frames and at least one more): set {self.name}.seq_length={self.num_ref_frames + 1} or more, or "
                f"a lower {self.name}.num_ref_frames",
            )
        if any(c <= 0 or c % 16 for c in self.crop_size):
            fail("crop_size", f"must be two positive multiples of 16 (the stride), got {list(self.crop_size)}")
        steps = list(self.lr_schedule_steps)
        if steps != sorted(steps) or any(not 0 < x <= self.num_iterations for x in steps):
            # the data groups set both; a num_iterations override alone leaves the group's steps behind
            fail(
                "lr_schedule_steps",
                f"{steps} must be increasing and within (0, num_iterations={self.num_iterations}]; "
                f"set {s}.lr_schedule_steps=[...] along with {s}.num_iterations",
            )
        if steps and self.lr_schedule == "constant":
            fail(
                "lr_schedule_steps",
                f"{steps} has no effect with lr_schedule=constant; set {s}.lr_schedule=step to use them, "
                f"or {s}.lr_schedule_steps=[]",
            )
        for key in ("deep_update_prob", "merge_probability", "importance_sample_ratio"):
            if not 0 <= getattr(self, key) <= 1:
                fail(key, f"must be within [0, 1], got {getattr(self, key)}")
        fractions = self.max_skip_schedule_fraction
        if len(fractions) != len(self.max_skip_schedule):
            fail("max_skip_schedule_fraction", "needs one fraction per max_skip_schedule entry")
        if list(fractions) != sorted(fractions) or (fractions and fractions[0] != 0.0):
            fail("max_skip_schedule_fraction", f"{list(fractions)} must start at 0.0 and increase")
        if any(f >= 1 for f in fractions):  # a switch at or after the stage's end never happens
            fail("max_skip_schedule_fraction", f"{list(fractions)}: every fraction must be below 1.0")
        if any(v < 1 for v in self.max_skip_schedule):
            fail("max_skip_schedule", "every max_skip must be >= 1")


@dataclass(frozen=True)
class Sa1bMasks:
    """Which masks of an SA-1B image become pre-training samples (docs/sa1b.md explains the defaults)."""

    min_area_fraction: float = 0.02  # mask pixels / image pixels, measured on the decoded mask
    min_predicted_iou: float = 0.0  # 0 keeps every mask (the release's masks already passed SAM's filters)
    min_stability_score: float = 0.0
    # the largest masks that passed, at most this many per image (null: all): SA-1B has ~100 masks an image, and
    # this balances it against the other static sets while keeping every image (docs/sa1b.md, Balance)
    max_masks_per_image: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_area_fraction", "min_predicted_iou", "min_stability_score"):
            if not 0 <= getattr(self, name) <= 1:
                raise FieldError(name, f"must be within [0, 1], got {getattr(self, name)}")
        if self.max_masks_per_image is not None and self.max_masks_per_image < 1:
            raise FieldError("max_masks_per_image", f"must be >= 1 or null, got {self.max_masks_per_image}")


@dataclass(frozen=True)
class ImageDataset:
    """A static image set (pre-training)."""

    directory: str
    # 0: FSS-style class/N.jpg + N.png; 1: flat NAME.jpg + NAME.png; sa1b: SA-1B sa_N.jpg + sa_N.json (RLE masks)
    data_structure: Literal[0, 1, "sa1b"]
    multiplier: int
    sa1b: Sa1bMasks | None = None  # data_structure sa1b only; None = the defaults of Sa1bMasks

    def __post_init__(self) -> None:
        if self.sa1b is not None and self.data_structure != "sa1b":
            raise FieldError("sa1b", f"mask options apply to data_structure sa1b only, not {self.data_structure}")
        _check_at_least_one(self, ("multiplier",))


@dataclass(frozen=True)
class VideoDataset:
    """A video set in the DAVIS layout (main training)."""

    image_directory: str
    mask_directory: str
    multiplier: int
    frame_interval: int  # original video frames between consecutive JPEGs (YouTube-VOS: 5)
    subset: str | None = None  # text file of the videos to use
    empty_masks: str | None = None  # list written by scripts/find_empty_masks.py (used if present)
    # Masks may label an object in some annotated frames and not in others where it is visible (custom folders):
    # the object ids of every mask are read; a clip is drawn only when a first-frame object is labelled again
    # later in it, and only such objects are targets (cutie/data/index/annotation.py, sampling/video.py).
    partial_labels: bool = False
    # A mask of another size than its frame: 'error' fails the dataset; 'skip' reports it and uses the frame as
    # unannotated.
    wrong_size_masks: Literal["error", "skip"] = "error"

    def __post_init__(self) -> None:
        _check_at_least_one(self, ("multiplier", "frame_interval"))


def _check_at_least_one(entry: object, keys: tuple[str, ...]) -> None:
    """A dataset entry's counts: multiplier 0 would drop the dataset without a word (remove it from the stage's
    datasets instead), frame_interval 0 has no meaning."""
    for key in keys:
        if getattr(entry, key) < 1:
            raise FieldError(key, f"must be >= 1, got {getattr(entry, key)}")


@dataclass(frozen=True)
class ValDataset:
    """The held-out set for validation during training."""

    name: str
    image_directory: str
    mask_directory: str
    subset: str | None = None
    # objects first annotated after frame 0 are given (and scored) from their first mask, as eval's use_all_masks
    use_all_masks: bool = False


@dataclass(frozen=True)
class StageData:
    """A data group's choice of datasets for one stage. The other keys a data group may set for a stage
    (num_iterations, batch_size, crop_size, seq_length, lr_schedule_steps) are defaults that the stage takes
    through interpolation in train_config.yaml; they are checked here and read from the stage."""

    datasets: tuple[str, ...]
    num_iterations: int | None = None
    batch_size: int | None = None
    crop_size: tuple[int, int] | None = None
    seq_length: int | None = None
    lr_schedule_steps: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DataConfig:
    """The `data=` group: the dataset catalogue (datasets.yaml) and what each stage trains on."""

    name: str
    image_datasets: Mapping[str, ImageDataset]
    vos_datasets: Mapping[str, VideoDataset]
    pre_training: StageData
    main_training: StageData
    val_dataset: ValDataset | None = None
    # data=custom: where the folder is and how it mixes (interpolated into vos_datasets.CUSTOM)
    custom_root: str | None = None
    custom_frame_interval: int = 1
    custom_multiplier: int = 1

    def __post_init__(self) -> None:
        for stage, catalogue, group in (
            ("pre_training", self.image_datasets, "image_datasets"),
            ("main_training", self.vos_datasets, "vos_datasets"),
        ):
            names = getattr(self, stage).datasets
            if not names:
                raise ConfigError(f"`data.{stage}.datasets` is empty: name at least one dataset")
            for name in names:
                if name not in catalogue:
                    raise ConfigError(
                        f"`data.{stage}.datasets`: unknown dataset {name!r}; known: {', '.join(catalogue)} "
                        f"(define it under data.{group} in cutie/config/data/datasets.yaml)"
                    )

    def stage(self, stage: str) -> StageData:
        return self.pre_training if stage == "pre_training" else self.main_training


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig
    runtime: RuntimeConfig
    logging: LoggingConfig
    pre_training: StageConfig
    main_training: StageConfig
    data: DataConfig
    model: ModelSpec
    # The resolved configuration in the YAML layout users write (config.yaml, checkpoints, resume comparisons).
    resolved_yaml: str = dataclasses.field(default="", repr=False, compare=False)
    # Command-line overrides that have no effect in this run (a disabled stage's settings), logged at start.
    notes: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        return self.pre_training if name == "pre_training" else self.main_training

    @property
    def enabled_stages(self) -> list[str]:
        return [s for s in STAGES if self.stage(s).enabled]


_GROUPS: dict[str, type] = {"run": RunConfig, "runtime": RuntimeConfig, "logging": LoggingConfig}


def to_plain(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config as plain containers; an unresolvable value is a ConfigError naming its key."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except MissingMandatoryValue as e:
        raise ConfigError(f"`{e.full_key}`: a value is required here (pass {e.full_key}=...)") from None
    except InterpolationResolutionError as e:
        first = str(e.msg).splitlines()[0]
        missing = first.rsplit("Missing mandatory value: ", 1)
        if len(missing) == 2:  # an interpolation of a required value (e.g. data.custom_root=???)
            key = missing[1].strip()
            raise ConfigError(f"`{key}`: a value is required here (pass {key}=...)") from None
        raise ConfigError(f"`{e.full_key}`: cannot be resolved ({first})") from None


def parse_train_config(cfg: DictConfig | Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """The one parse of the training configuration (Hydra's composed config, or the same as a mapping).
    `overrides`: the command line's, to name those that have no effect (TrainConfig.notes)."""
    typed = _parse(cfg)
    return dataclasses.replace(typed, notes=_ineffective(typed, overrides))


# The keys a data group may set for a stage, as defaults that the stage's own key interpolates.
_STAGE_DEFAULTS = tuple(f.name for f in dataclasses.fields(StageData) if f.name != "datasets")


def _tuple_or(value: Any) -> Any:
    """Lists and tuples compare alike (a parsed list is a tuple)."""
    return tuple(value) if isinstance(value, list | tuple) else value


def _yaml(value: Any) -> str:
    return "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list | tuple) else str(value)


def _ineffective(cfg: TrainConfig, overrides: Sequence[str]) -> tuple[str, ...]:
    """The overrides of a disabled stage's settings (or of its datasets): not an error, since one set of overrides
    often serves a pre-training job and a main-training job (docker/entrypoint.sh pretrain / main-train), but
    said once at start rather than ignored without a word."""
    notes = []
    used = {n for s in cfg.enabled_stages for n in cfg.data.stage(s).datasets}  # datasets some stage trains on
    trained = f"data={cfg.data.name} trains on {', '.join(sorted(used)) or 'nothing'}"
    for line in overrides:
        key = line.split("=", 1)[0].lstrip("+~")
        for stage in STAGES:
            if cfg.stage(stage).enabled or key == f"{stage}.enabled":
                continue
            if key.startswith((f"{stage}.", f"data.{stage}.")):
                notes.append(f"`{line}` has no effect: {stage}.enabled is false (that stage does not run)")
        parts = key.split(".")
        # data.<stage>.<k> is only the default of <stage>.<k> (an interpolation): set both and the data one loses.
        if len(parts) == 3 and parts[0] == "data" and parts[1] in STAGES and parts[2] in _STAGE_DEFAULTS:
            stage, name = parts[1], parts[2]
            mine, default = getattr(cfg.stage(stage), name), getattr(cfg.data.stage(stage), name)
            if cfg.stage(stage).enabled and default is not None and _tuple_or(mine) != _tuple_or(default):
                notes.append(f"`{line}` has no effect: {stage}.{name}={_yaml(mine)} is set too, and wins")
        # A catalogue entry that no enabled stage trains on (e.g. data.vos_datasets.DAVIS.* with data=custom).
        if len(parts) >= 3 and parts[0] == "data" and parts[1] in ("image_datasets", "vos_datasets"):
            if parts[2] not in used:
                notes.append(
                    f"`{line}` has no effect: no enabled stage trains on {parts[2]} ({trained}; the stages' lists "
                    "are data.<stage>.datasets)"
                )
        # data=custom's own keys feed its CUSTOM entry; added with '+' to another data group they feed nothing.
        if key in ("data.custom_root", "data.custom_frame_interval", "data.custom_multiplier"):
            if "CUSTOM" not in used:
                notes.append(
                    f"`{line}` has no effect: no enabled stage trains on CUSTOM ({trained}); add data=custom to "
                    "train on your folder"
                )
        if key == "model.imagenet_dir" and cfg.run.weights and cfg.model.imagenet_dir is not None:
            notes.append(f"`{line}` has no effect: weights={cfg.run.weights} gives every weight of the network")
    return tuple(notes)


def _parse(cfg: DictConfig | Mapping[str, Any]) -> TrainConfig:
    data = cfg.get("data") if isinstance(cfg, Mapping | DictConfig) else None
    if isinstance(data, Mapping | DictConfig) and "pre_training" not in data and "main_training" not in data:
        raise ConfigError(
            f"`data`: this group has no stage dataset lists (datasets.yaml is the catalogue the data groups "
            f"include, not a data group); choose data= one of {', '.join(data_groups())}"
        )
    plain = to_plain(cfg)
    plain.pop("hydra", None)
    grouped: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
    owner = {f.name: g for g, cls in _GROUPS.items() for f in dataclasses.fields(cls)}
    rest = {}
    for key, value in plain.items():
        if key in owner:
            grouped[owner[key]][key] = value
        else:
            rest[key] = value
    allowed = set(owner) | {"pre_training", "main_training", "data", "model"}
    unknown = sorted(set(rest) - allowed)
    if unknown:
        raise ConfigError(f"`{unknown[0]}`: unknown option (a typo?); see cutie/config/train_config.yaml")
    for key in ("pre_training", "main_training", "data", "model"):
        if key not in rest:
            raise ConfigError(f"`{key}`: missing from the configuration")
    return TrainConfig(
        run=parse(RunConfig, grouped["run"], ""),
        runtime=parse(RuntimeConfig, grouped["runtime"], ""),
        logging=parse(LoggingConfig, grouped["logging"], ""),
        pre_training=_parse_stage("pre_training", rest["pre_training"]),
        main_training=_parse_stage("main_training", rest["main_training"]),
        data=parse(DataConfig, _crop_lists_to_pairs(rest["data"]), "data"),
        model=ModelSpec.from_config(rest["model"]),
        resolved_yaml=OmegaConf.to_yaml(OmegaConf.create(plain)),
    )


def _crop_lists_to_pairs(node: Any) -> Any:
    """`crop_size: 384` means 384x384 (as the official config allows); lists stay as they are."""
    if not isinstance(node, Mapping):
        return node
    out = {}
    for k, v in node.items():
        if k == "crop_size" and isinstance(v, int) and not isinstance(v, bool):
            out[k] = [v, v]
        else:
            out[k] = _crop_lists_to_pairs(v)
    return out


# Keys of main training that pre-training has no use for (it draws one static image per clip): refused there
# rather than ignored.
MAIN_ONLY_KEYS = ("merge_probability", "max_skip_schedule", "max_skip_schedule_fraction")


def _parse_stage(name: str, node: Any) -> StageConfig:
    if name == "pre_training" and isinstance(node, Mapping):
        given = [k for k in MAIN_ONLY_KEYS if k in node]
        if given:
            raise ConfigError(
                f"`pre_training.{given[0]}`: applies to main_training only (pre-training draws one static image "
                f"per clip, so it has no effect here); set main_training.{given[0]} instead"
            )
    if isinstance(node, Mapping) and node.get("name", name) != name:  # before StageConfig names it by the bad name
        raise ConfigError(f"`{name}.name`: must be {name!r} (the stage's own name), got {node['name']!r}")
    return parse(StageConfig, _crop_lists_to_pairs(node), name)


def to_dict(obj: Any) -> Any:
    """A typed config (or any part of it) as plain YAML-ready containers (tuples as lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


__all__ = [
    "STAGES",
    "ConfigError",
    "DataConfig",
    "ImageDataset",
    "LoggingConfig",
    "RunConfig",
    "RuntimeConfig",
    "Sa1bMasks",
    "StageConfig",
    "StageData",
    "TrainConfig",
    "ValDataset",
    "VideoDataset",
    "parse_train_config",
    "to_dict",
]

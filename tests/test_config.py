"""The typed configuration: every group parses, values are checked, unknown keys and unread keys fail."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cutie.config import evaluation, model, train
from cutie.config.evaluation import parse_eval_config
from cutie.config.overrides import compose_config
from cutie.config.train import ConfigError, parse_train_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "cutie" / "config"
DATA_GROUPS = sorted(p.stem for p in (CONFIG / "data").glob("*.yaml") if p.stem != "datasets")

# Fields whose value reaches the code only through an interpolation in the YAML (so no attribute read exists).
READ_BY_INTERPOLATION = {
    ("DataConfig", "custom_root"): "vos_datasets.CUSTOM paths",
    ("DataConfig", "custom_frame_interval"): "vos_datasets.CUSTOM.frame_interval",
    ("DataConfig", "custom_multiplier"): "vos_datasets.CUSTOM.multiplier",
    ("EvalConfig", "data_root"): "the datasets' paths",
    **{
        ("StageData", k): f"{k} of the stage (train_config.yaml)"
        for k in ("num_iterations", "batch_size", "crop_size", "seq_length", "lr_schedule_steps")
    },
}


def _train(*overrides: str) -> train.TrainConfig:
    """The parsed config of a command line's overrides (its notes too: the overrides that have no effect)."""
    with initialize_config_dir(config_dir=str(CONFIG), version_base="1.3"):
        return parse_train_config(compose(config_name="train_config", overrides=list(overrides)), overrides)


@pytest.mark.parametrize("data", DATA_GROUPS)
@pytest.mark.parametrize("model_name", ["small", "base"])
def test_every_group_parses(data: str, model_name: str) -> None:
    extra = ["data.custom_root=/videos"] if data == "custom" else []
    cfg = _train(f"data={data}", f"model={model_name}", *extra)
    assert cfg.data.name == data and cfg.model.name == model_name
    assert cfg.enabled_stages == ["pre_training", "main_training"]
    assert cfg.main_training.num_iterations == (cfg.data.main_training.num_iterations or 0) or data == "custom"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run.seed = 1  # type: ignore[misc]


def test_official_defaults_reach_the_typed_stages() -> None:
    cfg = _train("data=mega", "model=base")
    main, pre = cfg.main_training, cfg.pre_training
    assert (main.batch_size, main.num_iterations, main.lr_schedule_steps) == (16, 175000, (140000, 160000))
    assert (main.crop_size, main.seq_length, main.num_ref_frames, main.num_objects) == ((480, 480), 8, 3, 3)
    assert (pre.crop_size, pre.seq_length, pre.num_objects, pre.lr_schedule) == ((384, 384), 3, 1, "constant")
    assert cfg.model.sensory_aux_weight == cfg.model.query_aux_weight == 0.01


@pytest.mark.parametrize("stage", train.STAGES)
def test_every_stage_default_of_a_data_group_reaches_the_stage(stage: str) -> None:
    """StageData's keys are the data group's defaults for the stage: each must reach it (pre-training's
    seq_length and lr_schedule_steps were literals in train_config.yaml, so data.pre_training.seq_length was
    accepted and ignored)."""
    given = {"num_iterations": 40, "batch_size": 6, "crop_size": [64, 64], "seq_length": 5, "lr_schedule_steps": [30]}
    assert set(given) == {f.name for f in dataclasses.fields(train.StageData)} - {"datasets"}
    overrides = [f"++data.{stage}.{k}={v}".replace(" ", "") for k, v in given.items()] + [f"{stage}.lr_schedule=step"]
    cfg = _train("data=tiny", *overrides).stage(stage)
    assert {k: getattr(cfg, k) for k in given} == {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data=datasets", r"`data`: .*catalogue.*choose data="),
        ("data=custom", r"`data.custom_root`: a value is required"),
        ("+foo=1", r"`foo`: unknown option"),
        ("+main_training.lerning_rate=1", r"`main_training.lerning_rate`: unknown option"),
        ("+data.vos_datasets.DAVIS.bogus=1", r"`data.vos_datasets.DAVIS.bogus`: unknown option"),
        ("+model.bogus=2", r"unknown option `model.bogus`"),
        ("main_training.crop_size=[100,96]", r"`main_training.crop_size`: must be two positive multiples of 16"),
        ("num_workers=x", r"`num_workers`: expected an integer"),
        ("data.main_training.datasets=[NOPE]", r"`data.main_training.datasets`: unknown dataset 'NOPE'"),
        ("pre_training.lr_schedule=cosine", r"`pre_training.lr_schedule`: must be one of"),
        ("main_training.num_ref_frames=8", r"`main_training.num_ref_frames`: must be in \[1, seq_length=8\)"),
        ("max_bad_sample_fraction=2", r"`max_bad_sample_fraction`: must be within"),
        ("device=tpu", r"`device`: must be one of"),
        # values the run used to accept and then trained wrongly with (or crashed on) without a word
        ("main_training.learning_rate=-1", r"`main_training.learning_rate`: must be > 0, got -1.0"),
        ("pre_training.learning_rate=0", r"`pre_training.learning_rate`: must be > 0"),
        ("main_training.clip_grad_norm=0", r"`main_training.clip_grad_norm`: must be > 0"),
        ("main_training.weight_decay=-0.1", r"`main_training.weight_decay`: must be >= 0"),
        ("main_training.embed_weight_decay=-1", r"`main_training.embed_weight_decay`: must be >= 0"),
        ("main_training.backbone_lr_ratio=-1", r"`main_training.backbone_lr_ratio`: must be >= 0"),
        ("main_training.lr_schedule_gamma=0", r"`main_training.lr_schedule_gamma`: must be within \(0, 1\]"),
        ("main_training.lr_schedule_gamma=10", r"`main_training.lr_schedule_gamma`: must be within \(0, 1\]"),
        ("main_training.oversample_ratio=0.5", r"`main_training.oversample_ratio`: must be >= 1"),
        ("main_training.seq_length=1", r"`main_training.seq_length`: must be >= 2"),
        ("main_training.max_skip_schedule_fraction=[0,0.1,0.3,1.2]", r"every fraction must be below 1.0"),
        (
            "pre_training.lr_schedule_steps=[5]",
            r"`pre_training.lr_schedule_steps`: \[5\] has no effect with lr_schedule=constant",
        ),
        ("+pre_training.merge_probability=0.3", r"`pre_training.merge_probability`: applies to main_training only"),
        ("+pre_training.max_skip_schedule=[3]", r"`pre_training.max_skip_schedule`: applies to main_training only"),
        (
            "main_training.name=foo",
            r"^`main_training.name`: must be 'main_training' \(the stage's own name\), got 'foo'$",
        ),
        (
            "main_training.num_iterations=1000",
            r"`main_training.lr_schedule_steps`: \[100000, 115000\] must be increasing and within "
            r"\(0, num_iterations=1000\]; set main_training.lr_schedule_steps=\[...\] along with",
        ),
        ("seed=-1", r"`seed`: must be >= 0"),
        ("stop_at_iteration=0", r"`stop_at_iteration`: must be >= 1"),
        ("max_nonfinite_steps=0", r"`max_nonfinite_steps`: must be >= 1"),
        ("exp_id=../elsewhere", r"`exp_id`: must be a plain folder name"),
        ("exp_id=a/b", r"`exp_id`: must be a plain folder name"),
        ("exp_id=", r"`exp_id`: must be a plain folder name"),
        # `weights=$W` with W unset trained from ImageNet without a word; data_root= read the working folder
        ("weights=", r"^`weights`: is empty; give a path \(weights=PATH\) or null"),
        ("checkpoint=", r"^`checkpoint`: is empty"),
        ("data_root=", r"^`data_root`: is empty"),
        ("data.vos_datasets.DAVIS.multiplier=0", r"`data.vos_datasets.DAVIS.multiplier`: must be >= 1, got 0"),
        ("data.vos_datasets.MOSE.frame_interval=0", r"`data.vos_datasets.MOSE.frame_interval`: must be >= 1"),
        ("data.image_datasets.FSS.multiplier=-1", r"`data.image_datasets.FSS.multiplier`: must be >= 1"),
        # the model node was read with int()/bool(): 'abc' crashed as an internal error, 64.7 became 64, 'maybe' True
        ("model.key_dim=abc", r"`model.key_dim`: expected an integer, got 'abc'"),
        ("model.key_dim=64.7", r"`model.key_dim`: expected an integer, got 64.7"),
        ("model.aux_loss.sensory.enabled=maybe", r"`model.aux_loss.sensory.enabled`: expected true or false"),
        ("model.pixel_mean=[0.5,0.5]", r"`model.pixel_mean`: expected a list of 3 values"),
        ("model.key_dim=0", r"`model.key_dim` must be >= 1, got 0"),
        ("model.object_transformer.num_blocks=0", r"`model.object_transformer.num_blocks` must be >= 1"),
        ("model.pixel_std=[0.2,0,0.2]", r"`model.pixel_std` \(every value\).* must be > 0"),
        ("model.aux_loss.query.weight=-1", r"`model.aux_loss.query.weight` must be >= 0"),
        # a check inside an optional group names the option, not the whole group
        ("data.image_datasets.SA1B.sa1b.max_masks_per_image=0", r"`data.image_datasets.SA1B.sa1b.max_masks_per_image`"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _train(override)


def test_settings_of_a_disabled_stage_are_named_as_having_no_effect() -> None:
    overrides = [
        "pre_training.enabled=false",
        "pre_training.learning_rate=1e-3",
        "data.pre_training.datasets=[FSS]",
        "main_training.learning_rate=2e-4",
        "seed=3",
    ]
    cfg = _train(*overrides)
    assert cfg.notes == (
        "`pre_training.learning_rate=1e-3` has no effect: pre_training.enabled is false (that stage does not run)",
        "`data.pre_training.datasets=[FSS]` has no effect: pre_training.enabled is false (that stage does not run)",
    )
    assert cfg.pre_training.learning_rate == 1e-3  # still parsed and checked: a bad value is an error all the same
    assert _train(*overrides) == cfg  # the notes are no part of what the run computes (resume comparisons)


def test_a_union_names_its_allowed_values() -> None:
    """`bool | Literal['auto'] | None` says what it accepts in YAML words, not in Python typing."""
    with initialize_config_dir(config_dir=str(CONFIG), version_base="1.3"):
        with pytest.raises(ConfigError, match=r"^`evaluate`: must be true or false, 'auto' or null, got 'Auto'$"):
            parse_eval_config(compose(config_name="eval_config", overrides=["evaluate=Auto"]))
        with pytest.raises(ConfigError, match=r"^`layout`: must be one of 'davis', 'sav', got 'SAV'$"):
            parse_eval_config(compose(config_name="eval_config", overrides=["layout=SAV"]))


def test_eval_config_parses_and_overrides_the_dataset(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONFIG), version_base="1.3"):
        cfg = parse_eval_config(compose(config_name="eval_config", overrides=["dataset=d17-val", "mem_every=3"]))
        with pytest.raises(ConfigError, match="`nope`: unknown option"):
            parse_eval_config(compose(config_name="eval_config", overrides=["+nope=1"]))
    entry = cfg.chosen_dataset()
    assert entry.mem_every == 3 and entry.size == 480 and entry.evaluate is True


def test_long_term_settings_without_long_term_memory_are_named_as_having_no_effect() -> None:
    off = ["dataset=d17-val", "long_term.max_mem_frames=8", "mem_every=3"]
    on = [*off, "use_long_term=true"]
    with initialize_config_dir(config_dir=str(CONFIG), version_base="1.3"):
        quiet = parse_eval_config(compose(config_name="eval_config", overrides=on), on)
        noted = parse_eval_config(compose(config_name="eval_config", overrides=off), off)
    assert quiet.notes == ()
    assert noted.notes == (
        "`long_term.max_mem_frames=8` has no effect: dataset=d17-val runs without long-term memory "
        "(add use_long_term=true)",
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # each of these ran before: top_k 0 gave every memory read zero weight, stagger_updates 0 never updated
        # the sensory memory, size/max_internal_size 0 or 15 meant "off" or a 15-pixel network input
        ("mem_every=0", r"^`mem_every`: must be >= 1 .*got 0$"),
        ("datasets.d17-val.mem_every=-1", r"^`datasets.d17-val.mem_every`: must be >= 1"),
        ("size=0", r"^`size`: must be -1 \(as stored\) or >= 16 pixels, got 0$"),
        ("size=15", r"^`size`: must be -1"),
        ("datasets.custom.size=-5", r"^`datasets.custom.size`: must be -1"),
        ("max_internal_size=0", r"^`max_internal_size`: must be -1 \(no limit\) or >= 16"),
        ("max_mem_frames=1", r"^`max_mem_frames`: must be >= 2"),
        ("top_k=0", r"^`top_k`: must be >= 1 or null"),
        ("stagger_updates=0", r"^`stagger_updates`: must be >= 1"),
        ("chunk_size=0", r"^`chunk_size`: must be -1 .* or >= 1, got 0$"),
        ("max_videos=0", r"^`max_videos`: must be >= 1 or null"),
        ("exp_id=../elsewhere", r"^`exp_id`: must be a plain folder name"),
        ("+notes=[x]", r"^`notes`: unknown option"),
        ("long_term.buffer_tokens=-1", r"^`long_term.buffer_tokens`: must be >= 0"),
        ("image_directory=", r"^`image_directory`: is empty"),
        ("weights=", r"^`weights`: is empty"),
        ("long_term.min_mem_frames=20", r"^`long_term.min_mem_frames`: must be >= 2 and below long_term.max_mem"),
        ("long_term.num_prototypes=0", r"^`long_term.num_prototypes`: must be >= 1"),
        ("long_term.buffer_tokens=20000", r"^`long_term.max_num_tokens`: must exceed num_prototypes \+ buffer"),
    ],
)
def test_bad_eval_values_name_the_key(override: str, message: str) -> None:
    with initialize_config_dir(config_dir=str(CONFIG), version_base="1.3"):
        with pytest.raises(ConfigError, match=message):
            parse_eval_config(compose(config_name="eval_config", overrides=[override]))


@pytest.mark.parametrize(
    ("config", "overrides", "message"),
    [
        (
            "train_config",
            ["model=small", "model=tiny"],
            r"^`model=tiny`: no such model config; choose model= one of: base, small$",
        ),
        ("train_config", ["data=Tiny"], r"^`data=Tiny`: no such data config; choose data= one of: base, custom, mega,"),
        (
            "train_config",
            ["pre_training.merge_probability=0.3"],
            r"^`pre_training.merge_probability`: unknown option \(a typo\?\); options here: amp, .*weight_decay$",
        ),
        (
            "train_config",
            ["main_training.lerning_rate=1"],
            r"^`main_training.lerning_rate`: unknown option .* learning_rate,",
        ),
        (
            "train_config",
            ["main_training.crop_size=[96"],
            r"^cannot read the override `main_training.crop_size=\[96`: ",
        ),
        ("train_config", ["+exp_id=x"], r"An item is already at 'exp_id'. Without the '\+'"),
        ("train_config", ["data=null"], r"a config group \(data=, model=\) takes one of its options, not null$"),
        (
            "eval_config",
            ["datasets.d17-val.memevery=3"],
            r"^`datasets.d17-val.memevery`: unknown option .*: evaluate, image_directory, mask_directory, mem_every,",
        ),
    ],
)
def test_hydra_override_errors_are_one_line(config: str, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        compose_config(config, overrides)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("script", "override", "start"),
    [
        ("train.py", "model=tiny", "configuration error: `model=tiny`: no such model config"),
        (
            "train.py",
            "main_training.lerning_rate=1",
            "configuration error: `main_training.lerning_rate`: unknown option",
        ),
        ("eval.py", "memevery=3", "configuration error: `memevery`: unknown option"),
    ],
)
def test_entry_points_report_a_bad_override_in_one_line(script: str, override: str, start: str, tmp_path: Path) -> None:
    """Hydra's own report is several lines (its search path, a hint about HYDRA_FULL_ERROR) with exit code 1."""
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("CUTIE_DEBUG", None)
    cmd = [sys.executable, str(REPO / "cutie" / script), override, f"output_root={tmp_path}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith(start) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _dataclasses() -> list[type]:
    out = []
    for mod in (train, evaluation, model):
        for value in vars(mod).values():
            if dataclasses.is_dataclass(value) and value.__module__ == mod.__name__:
                out.append(value)
    return out


def test_every_config_field_is_read_by_some_code() -> None:
    """A key that no code reads fails here: every field of the typed config must be read as an attribute
    somewhere in the package outside cutie/config (or be listed as reaching the code through interpolation)."""
    source = "\n".join(
        p.read_text(encoding="utf-8")
        for p in (REPO / "cutie").rglob("*.py")
        if "config" not in p.relative_to(REPO).parts
    )
    unread = [
        f"{cls.__name__}.{f.name}"
        for cls in _dataclasses()
        for f in dataclasses.fields(cls)
        if (cls.__name__, f.name) not in READ_BY_INTERPOLATION and not re.search(rf"\.{f.name}\b", source)
    ]
    assert not unread, f"config fields no code reads (remove them from the YAML and the schema): {unread}"


def test_every_yaml_key_is_a_field() -> None:
    """The YAML tree walked against the schema: the strict parse of every group already refuses unknown keys;
    here every train_config.yaml top-level key must belong to exactly one concern."""
    import yaml

    top = yaml.safe_load((CONFIG / "train_config.yaml").read_text())
    owned = {
        f.name for cls in (train.RunConfig, train.RuntimeConfig, train.LoggingConfig) for f in dataclasses.fields(cls)
    }
    assert set(top) - {"defaults", "hydra"} == owned | {"pre_training", "main_training"}


def test_a_key_of_another_group_option_names_that_option() -> None:
    """`data.custom_root=...` without `data=custom` (the README's fine-tune command minus one word) was reported
    as a typo, with the options of data=base listed and no word of data=custom."""
    with pytest.raises(ConfigError) as e:
        compose_config("train_config", ["data.custom_root=/videos", "pre_training.enabled=False"])
    assert str(e.value) == (
        "`data.custom_root`: not an option of this data= config; it is one of data=custom "
        "(add data=custom to the command line)"
    )
    with pytest.raises(ConfigError, match=r"^`data.custom_rot`: unknown option \(a typo\?\); options here: "):
        compose_config("train_config", ["data=custom", "data.custom_rot=/videos"])  # a real typo stays one


def test_overrides_that_no_enabled_stage_reads_are_named() -> None:
    """A catalogue entry of a dataset that no enabled stage trains on (DAVIS under data=custom), or an ImageNet
    folder next to weights= (which gives every weight), was taken without a word and did nothing."""
    overrides = [
        "data=custom",
        "data.custom_root=/videos",
        "pre_training.enabled=false",
        "weights=/w/cutie-small-mega.pth",
        "model.imagenet_dir=/w/imagenet",
        "data.vos_datasets.DAVIS.multiplier=5",
        "data.vos_datasets.CUSTOM.multiplier=2",  # read: CUSTOM is trained on
    ]
    cfg = _train(*overrides)
    assert cfg.notes == (
        "`model.imagenet_dir=/w/imagenet` has no effect: weights=/w/cutie-small-mega.pth gives every weight of "
        "the network",
        "`data.vos_datasets.DAVIS.multiplier=5` has no effect: no enabled stage trains on DAVIS (data=custom "
        "trains on CUSTOM; the stages' lists are data.<stage>.datasets)",
    )
    # Without weights= the folder initialises the encoders; with DAVIS in the list its entry is read.
    used = ["data.main_training.datasets=[CUSTOM,DAVIS]", "model.imagenet_dir=/w/imagenet"]
    kept = [o for o in overrides if not o.startswith(("weights=", "model.imagenet_dir="))] + used
    assert _train(*kept).notes == ()


def test_a_data_stage_default_under_the_stages_own_setting_is_named() -> None:
    """`data.main_training.num_iterations` (the README's custom-data knob) is only the default of
    `main_training.num_iterations`; with the README's CPU command (which sets the latter) it changed nothing."""
    overrides = [
        "data=custom",
        "data.custom_root=/videos",
        "main_training.num_iterations=200",
        "main_training.lr_schedule_steps=[160]",
        "data.main_training.num_iterations=400",
        "data.main_training.lr_schedule_steps=[160]",  # the same value: nothing lost
    ]
    cfg = _train(*overrides)
    assert cfg.main_training.num_iterations == 200
    assert cfg.notes == (
        "`data.main_training.num_iterations=400` has no effect: main_training.num_iterations=200 is set too, and wins",
    )
    alone = [o for o in overrides if not o.startswith("main_training.")]
    cfg = _train(*alone)
    assert cfg.main_training.num_iterations == 400 and cfg.notes == ()


def test_a_clip_too_short_for_the_memory_frames_names_both_fixes() -> None:
    """`main_training.seq_length=3` (the README lowers it for sparse folders) was refused as a bad num_ref_frames,
    an option the user had not touched, without saying what to set."""
    with pytest.raises(ConfigError) as e:
        _train("main_training.seq_length=3")
    assert str(e.value) == (
        "`main_training.num_ref_frames`: must be in [1, seq_length=3), got 3 (a clip is the memory frames and at "
        "least one more): set main_training.seq_length=4 or more, or a lower main_training.num_ref_frames"
    )


def test_custom_root_added_to_another_data_group_is_named() -> None:
    """`+data.custom_root=...` (the '+' Hydra suggests for a key it does not know) under data=base was accepted
    and fed nothing: the run trained on DAVIS and YouTube-VOS."""
    overrides = ["+data.custom_root=/videos", "pre_training.enabled=false"]
    cfg = _train(*overrides)
    assert cfg.notes == (
        "`+data.custom_root=/videos` has no effect: no enabled stage trains on CUSTOM (data=base trains on "
        "DAVIS, YouTubeVOS); add data=custom to train on your folder",
    )
    mine = ["data=custom", "data.custom_root=/videos", "pre_training.enabled=false"]
    assert _train(*mine).notes == ()

"""Command-line overrides checked the way Hydra will apply them, so that a bad one is one ConfigError line.

Hydra reports a bad override itself (a missing group option, a key not in the config, a syntax error) with a
multi-line message, its config search path and exit code 1, before our code runs. The entry points call
`check_overrides` first: the same composition, and on failure one line naming the override, what is allowed
and the fix (exit 2 through cutie/utils/cli.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cutie.config.train import data_groups
from cutie.config.typed import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent


def compose_config(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """`config_name` composed with `overrides`; a bad override is a ConfigError of one line."""
    try:
        return _compose(config_name, overrides)
    except HydraException as e:
        raise ConfigError(describe(e, config_name, overrides)) from None
    except ValueError as e:  # Hydra's answer to a group set to null (data=null)
        first = (str(e).strip().splitlines() or ["invalid override"])[0]
        raise ConfigError(f"{first}: a config group (data=, model=) takes one of its options, not null") from None


def check_overrides(config_name: str, args: Sequence[str]) -> None:
    """Composes the config with the command line's overrides, as the entry point's Hydra will. Hydra's own
    flags (`--help`, `--cfg job`, `-m`) are left to Hydra."""
    if any(a.startswith("-") for a in args):
        return
    compose_config(config_name, args)


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def describe(e: HydraException, config_name: str, overrides: Sequence[str]) -> str:
    """Hydra's composition error as one line: the override, what is wrong, what is allowed."""
    text = str(e).strip()
    first = (text.splitlines() or ["invalid override"])[0]
    if isinstance(e, MissingConfigException) and "Available options in '" in text:
        # "In 'train_config': Could not find 'model/tiny'" ... "Available options in 'model':\n\tbase\n\tsmall"
        group = text.split("Available options in '", 1)[1].split("'", 1)[0]
        options = [line.strip() for line in text.split("Available options in", 1)[1].splitlines()[1:]]
        options = [o for o in options if o and not o.startswith(("Config search path", "provider="))]
        if group == "data":  # datasets.yaml is the catalogue the data groups include, not a group
            options = data_groups()
        given = next((o for o in reversed(overrides) if o.split("=", 1)[0].lstrip("+~") == group), group)
        return f"`{given}`: no such {group} config; choose {group}= one of: {', '.join(options)}"
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause):
        key = str(cause.full_key)
        elsewhere = _groups_with(config_name, overrides, key)
        if elsewhere:  # e.g. data.custom_root without data=custom: the key is right, the group option is not
            group = key.split(".", 1)[0]
            return (
                f"`{key}`: not an option of this {group}= config; it is one of {group}={', '.join(elsewhere)} "
                f"(add {group}={elsewhere[0]} to the command line)"
            )
        return f"`{key}`: unknown option (a typo?){_siblings(config_name, overrides, key)}"
    if "An item is already at" in first:
        return f"{first} Without the '+', an override changes the value that is there"
    bad = _unparsable(overrides)
    if bad is not None:
        return (
            f"cannot read the override `{bad}`: {first} (write key=value; quote a value with spaces or "
            "brackets, e.g. 'key=[1, 2]')"
        )
    return first


def _groups_with(config_name: str, overrides: Sequence[str], key: str) -> list[str]:
    """The options of the config group that `key` lies in (data=, model=) under which the overrides compose."""
    group = key.split(".", 1)[0]
    if "." not in key or not (CONFIG_DIR / group).is_dir():
        return []
    options = data_groups() if group == "data" else sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != group]
    found = []
    for option in options:
        try:
            _compose(config_name, [*others, f"{group}={option}"])
        except (HydraException, ValueError):
            continue
        found.append(option)
    return found


def _siblings(config_name: str, overrides: Sequence[str], key: str) -> str:
    """'; options here: ...' for the node that `key` was meant for (empty when it cannot be found)."""
    parent, _, _ = key.rpartition(".")
    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node = _compose(config_name, others)
    except HydraException:
        return ""
    node = OmegaConf.select(node, parent) if parent else node
    if not isinstance(node, DictConfig):
        return ""
    return f"; options here: {', '.join(sorted(str(k) for k in node if k != 'hydra'))}"


def _unparsable(overrides: Sequence[str]) -> str | None:
    parser = OverridesParser.create()
    for line in overrides:
        try:
            parser.parse_overrides([line])
        except HydraException:
            return line
    return None

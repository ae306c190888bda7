"""Reads a resolved config mapping into frozen dataclasses, strictly: every key must be a field, every field must
be given (or have a default), every value must have the field's type. Errors name the key and the fix.

Supported field types: bool, int, float, str, None-unions (`int | None`), `tuple[T, ...]` / `tuple[A, B]` (from
YAML lists), `Mapping[str, T]` (returned as a read-only dict), nested dataclasses, and `Literal[...]`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem found before anything runs; the message names the option and the fix."""


class FieldError(ConfigError):
    """A bad value found by a dataclass's own check (`__post_init__`), which does not know where it sits in the
    tree: `key` is the field's name; `parse` re-raises it as a ConfigError under the node's full dotted name."""

    def __init__(self, key: str, msg: str) -> None:
        super().__init__(f"`{key}`: {msg}")
        self.key, self.msg = key, msg


def _fail(path: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"`{path}`: {msg}")


def _describe(tp: Any) -> str:
    """What a value of type `tp` looks like, in the words of the YAML a user writes."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in get_args(tp)]
        return ", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else parts[0]
    if origin is typing.Literal:
        return ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return "a list"
    if origin in (Mapping, dict, typing.Mapping):
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a group of options"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return words.get(tp, str(tp).replace("typing.", ""))


def convert(tp: Any, value: Any, path: str) -> Any:
    """`value` checked and converted to type `tp` (a YAML list becomes a tuple, ints are accepted as floats)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            _fail(path, f"must be set ({_describe(tp)}), got null")
        members = [o for o in options if o is not type(None)]
        if len(members) == 1:  # `X | None`: X's own message says what is wrong (e.g. inside a group of options)
            return convert(members[0], value, path)
        for option in members:
            try:
                return convert(option, value, path)
            except ConfigError:
                pass  # try the next member of the union
        _fail(path, f"must be {_describe(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            _fail(path, f"must be one of {', '.join(repr(a) for a in get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            _fail(path, f"expected a list, got {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(path, f"expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (Mapping, dict, typing.Mapping):
        if not isinstance(value, Mapping):
            _fail(path, f"expected a mapping, got {value!r}")
        key_t, val_t = get_args(tp)
        return types.MappingProxyType(
            {convert(key_t, k, path): convert(val_t, v, f"{path}.{k}") for k, v in value.items()}
        )
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            _fail(path, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {path}")  # a schema bug, not a user error


def parse(cls: type[T], node: Any, path: str, given: Mapping[str, Any] | None = None) -> T:
    """A frozen dataclass `cls` from the mapping `node`; `path` is the node's dotted name for messages.
    `given` holds fields already parsed by their own reader (e.g. the model spec), taken as they are."""
    if not isinstance(node, Mapping):
        _fail(path, f"expected a group of options, got {node!r}")
    given = dict(given or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in given}  # type: ignore[arg-type]
    unknown = sorted(set(node) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        _fail(
            f"{path}.{unknown[0]}" if path else unknown[0],
            f"unknown option (a typo?); options here: {known}",
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{path}.{name}" if path else name
        if name in node:
            kwargs[name] = convert(hints[name], node[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(key, "missing option (add it to the config or pass it on the command line)")
    try:
        return cls(**kwargs, **given)
    except FieldError as e:
        _fail(f"{path}.{e.key}" if path else e.key, e.msg)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

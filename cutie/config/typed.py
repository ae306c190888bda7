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


def _fail(path: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"`{path}`: {msg}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def convert(tp: Any, value: Any, path: str) -> Any:
    """`value` checked and converted to type `tp` (a YAML list becomes a tuple, ints are accepted as floats)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            _fail(path, f"must be set (a {_type_name(tp)}), got null")
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except ConfigError:
                pass  # try the next member of the union
        _fail(path, f"expected {_type_name(tp)}, got {value!r}")
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
    return cls(**kwargs, **given)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]

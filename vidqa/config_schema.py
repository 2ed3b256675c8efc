"""Frozen dataclasses from YAML mappings: unknown keys are rejected with the list of valid ones,
values are checked against their annotated types (numbers, words of a ``Literal``, tuples,
nested dataclasses), and ``section.key=value`` overrides are applied to the mapping first.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

import yaml

from vidqa.errors import ConfigError


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``section.key=value`` override in place; the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r} must look like section.key=value, "
                          f"e.g. --set vlm.batch_size=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, where: str, renamed: Mapping[str, str] | None = None
              ) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__} "
                          f"{data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    for key in unknown:
        old = _join(where, key)
        if renamed and old in renamed:
            raise ConfigError(f"{old} was renamed to {renamed[old]}: rename the key "
                              f"(same value)")
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(_join(where, k) for k in unknown)}; valid keys in "
                          f"{where or 'the top level'}: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, _join(where, name), renamed)
              for name, value in data.items()}
    missing = [name for name, f in fields.items() if name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where or 'config'} is missing required key(s): {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or 'config'}: {err}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(hint: Any, value: Any, where: str, renamed: Mapping[str, str] | None = None
            ) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        shorthand = getattr(hint, "SHORTHAND", None)  # a bare string names this one field
        if isinstance(value, str) and shorthand:
            value = {shorthand: value}
        return from_dict(hint, value, where, renamed)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(option, value, where, renamed)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        value = _yaml_word(value, args)
        if value not in args:
            raise ConfigError(f"{where} = {value!r} is not allowed: choose one of "
                              f"{', '.join(repr(a) for a in args)}")
        return value
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        item_hint = args[0]
        return tuple(_coerce(item_hint, v, f"{where}[{i}]", renamed)
                     for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    raise AssertionError(f"unsupported config type {hint} at {where}")


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """ConfigError ``key = value is out of range: expected ...`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} = {value!r} is out of range: expected {expected}")


def one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _yaml_word(value: Any, allowed: tuple[Any, ...]) -> Any:
    """YAML 1.1 reads bare yes/no/on/off as booleans: give back the word the choice expects."""
    if not isinstance(value, bool) or any(isinstance(a, bool) for a in allowed):
        return value
    words = ("yes", "on", "true") if value else ("no", "off", "false")
    return next((word for word in words if word in allowed), value)

"""Reading and writing configs: strict conversion of plain data into config dataclasses, and YAML files.

A config is a tree of dataclasses. :func:`from_dict` fills it from plain data and rejects
any unknown key (a typo would otherwise be silently ignored), naming the nearest valid one.
The resolved config (every default filled in) is saved with each run.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from perturbsets._util.io import write_text
from perturbsets._util.registry import unknown_name_message

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names its dotted path."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(tp: Any, value: Any, where: str) -> Any:
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(options[0], value, where)
        for arg in options:
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in options)
        raise ConfigError(f"{where} must be a {names}, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys are errors naming the nearest key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(unknown_name_message("config key", path, [f"{where}.{n}" if where else n for n in names]))
        kwargs[key] = _convert(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        message = str(err)
        if not where or message.startswith(f"{where}."):
            raise
        # Messages that start with a field name get its dotted path: "training.epochs must…".
        first = re.split(r"[\s:\[.]", message, maxsplit=1)[0]
        raise ConfigError(f"{where}.{message}" if first in names else f"{where}: {message}") from None


def to_dict(obj: Any) -> Any:
    """Plain data (for YAML/JSON) from a config dataclass tree."""
    return dataclasses.asdict(obj)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: the problem and where it is (line and column count from 1)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def load_config(path: str | Path, cls: type[T]) -> T:
    """Read a YAML config file into the dataclass ``cls`` (:class:`Config` or :class:`RobustConfig`).

    Unknown keys, wrong types and bad values raise :class:`ConfigError` naming the dotted
    key and the nearest valid one.

    Example::

        config = load_config("perturbsets/configs/paper/mnist-rts.yaml", Config)
        config.training.epochs = 10
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a YAML config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}; fix the syntax there") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level of a config must be a mapping")
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config (all defaults filled) as YAML, atomically."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


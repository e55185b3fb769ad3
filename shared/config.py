"""One dataclass config per process: loadable from YAML, overridable by CLI flags.

Every field carries its help text in ``metadata["help"]`` (``opt(default, "help")``); the
CLI turns fields into flags. ``__post_init__`` of each config checks values and raises
ConfigError naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad config value. The message names the field and says how to fix it."""


def opt(default: Any, help: str) -> Any:
    """A config field with a default and a one-line help text."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def check(cond: bool, field: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"config field `{field}`: {message}")


def check_id(value: str, field: str) -> None:
    """Ids become file names, so they are restricted (see vlac.shared.wire.ID_PATTERN)."""
    from vlac.shared.wire import is_valid_id

    check(is_valid_id(value), field, f"{value!r} is not a valid id: use letters, digits, "
          "'_', '.', '-' (at most 64, starting with a letter or digit)")


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, field: str) -> float:
    """'90', '90s', '30m', '2h', '7d' -> seconds."""
    value = str(text).strip().lower()
    scale = _UNITS.get(value[-1:]) if value else None
    number = value[:-1] if scale is not None else value
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        seconds = -1.0
    check(seconds >= 0 and seconds != float("inf"), field, f"{text!r} is not a duration: give "
          "seconds, or a number with s, m, h or d (e.g. 30m, 24h, 7d)")
    return seconds


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Path or tp == "Path":
        return Path(value)
    if tp is float and isinstance(value, int):
        return float(value)
    if origin is list and isinstance(value, str):
        return [v for v in value.split(",") if v]
    return value


def selected_section(value: Any, section: str, base: type, selector: str, default: str,
                     config_class: Any, kind: str, keep_selector: bool = False) -> Any:
    """A config section whose class is chosen by one of its keys (``robot: {type: ...}``,
    ``algorithm: {name: ...}``): an instance of ``base`` passes through; a mapping (from YAML
    or flags) is checked by ``config_class(name)``, the selector kept as a field when
    ``keep_selector``; ``kind`` names what the selector picks, for the error."""
    if isinstance(value, base):
        return value
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"config field `{section}`: expected a mapping with `{selector}` and "
                          f"that {kind}'s fields, got {type(value).__name__}")
    fields = dict(value)
    name = fields.pop(selector, None) or default
    if keep_selector:
        fields[selector] = name
    return from_dict(config_class(name), fields, f"{section} ({selector} {name})")


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build a config from a mapping; unknown keys are an error that lists the known ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of field: value, got "
                          f"{type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known "
                          f"fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        tp = hints.get(k)
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            kwargs[k] = from_dict(tp, v, f"{source}: {k}")
        else:
            kwargs[k] = _coerce(tp, v, k)
        if typing.get_origin(tp) is typing.Literal and kwargs[k] not in typing.get_args(tp):
            raise ConfigError(f"{source}: config field `{k}`: {kwargs[k]!r} is not one of "
                              f"{list(typing.get_args(tp))}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_yaml_dict(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of field: value")
    return data


def load_yaml(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, load_yaml_dict(path), str(path))


def to_dict(cfg: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        out[f.name] = str(v) if isinstance(v, Path) else v
    return out


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def describe(cfg: Any) -> str:
    """The config as printed at start-up."""
    return f"{type(cfg).__name__}:\n" + "\n".join(
        "  " + line for line in dump_yaml(cfg).splitlines())

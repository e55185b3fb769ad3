"""Robot types by name: the built-in ones and those other packages register.

A robot type is a Robot subclass with a ``config_class`` (vlac.edge.robots.robot). Built in:
``metaworld`` (the default) and ``synthetic``. A lab's package adds its own without touching
this repository, through the ``vlac.robots`` entry-point group in its pyproject.toml::

    [project.entry-points."vlac.robots"]
    my-arm = "my_lab.arm:MyArm"

and then runs ``vlac edge run --robot.type my-arm --robot.port /dev/ttyACM0 ...``.

``features(cls)`` says which optional parts of the interface a type implements
(``snapshots``: save_state/restore_state; ``expert``: expert_action), so the edge process can
refuse a feature the robot lacks at start-up rather than fail mid-run.
"""

from __future__ import annotations

import dataclasses
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from vlac.edge.robots.metaworld import MetaWorldRobot
from vlac.edge.robots.robot import Robot, RobotConfig
from vlac.edge.robots.synthetic import SyntheticRobot
from vlac.shared.config import ConfigError, selected_section

GROUP = "vlac.robots"
"""The entry-point group other packages register robot types under."""
DEFAULT = "metaworld"
BUILTIN: dict[str, type[Robot]] = {"metaworld": MetaWorldRobot, "synthetic": SyntheticRobot}

HOW_TO_REGISTER = (f'register one in your package\'s pyproject.toml under [project.entry-points.'
                   f'"{GROUP}"] as `my-arm = "my_lab.arm:MyArm"` (a Robot subclass with a '
                   "config_class) and pip install it; docs/robots.md shows a whole adapter")


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, []).append(ep)
    return found


def names() -> list[str]:
    """Every robot type: the built-in ones first, then the registered ones."""
    return [*BUILTIN, *sorted(set(_entry_points()) - set(BUILTIN))]


def _where(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    origin = f"{dist.name} {dist.version}" if dist is not None else "an installed package"
    return f"{ep.value} from {origin}"


def describe_types() -> str:
    """One line for ``--robot.type``'s help: the known types and where they come from."""
    eps = _entry_points()
    known = [f"{n} (built in)" for n in BUILTIN]
    known += [f"{n} ({_where(eps[n][0])})" for n in sorted(set(eps) - set(BUILTIN))]
    return (f"Robot type: {', '.join(known)}; more through the `{GROUP}` entry-point group. "
            "The type's own settings are the other --robot.* flags (`--robot.type NAME -h` "
            "lists them).")


def robot_class(name: str | None = None) -> type[Robot]:
    """The Robot subclass registered as ``name`` (None: the default type)."""
    name = DEFAULT if name is None else name
    eps = _entry_points().get(name, [])
    if name in BUILTIN:
        if eps:
            raise ConfigError(f"config field `robot.type`: {name!r} is built in, and "
                              f"{_where(eps[0])} registers it again; rename that entry point")
        return BUILTIN[name]
    if not eps:
        raise ConfigError(f"config field `robot.type`: {name!r} is not a known robot type; "
                          f"known: {', '.join(names())}. To add one, {HOW_TO_REGISTER}")
    if len(eps) > 1:
        raise ConfigError(f"config field `robot.type`: {name!r} is registered more than once "
                          f"({'; '.join(_where(e) for e in eps)}); uninstall all but one")
    try:
        cls = eps[0].load()
    except Exception as e:  # the lab's module: any import error, said with its origin
        raise ConfigError(f"robot type {name!r} ({_where(eps[0])}) cannot be loaded: "
                          f"{type(e).__name__}: {e}") from e
    _check_type(name, cls, _where(eps[0]))
    return cls


def _check_type(name: str, cls: Any, where: str) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Robot)):
        raise ConfigError(f"robot type {name!r} ({where}) is {cls!r}, not a subclass of "
                          "vlac.edge.robots.Robot")
    config = getattr(cls, "config_class", None)
    if not (isinstance(config, type) and issubclass(config, RobotConfig)
            and dataclasses.is_dataclass(config)):
        raise ConfigError(f"robot type {name!r} ({where}): {cls.__name__}.config_class must be "
                          "a dataclass subclassing vlac.edge.robots.RobotConfig")


def type_name(config: RobotConfig) -> str:
    """The registered name of the robot type ``config`` belongs to."""
    for name in names():
        try:
            if robot_class(name).config_class is type(config):
                return name
        except ConfigError:
            continue  # a broken registration is reported when asked for by name
    raise ConfigError(f"config field `robot`: {type(config).__name__} is no registered robot "
                      f"type's config; known types: {', '.join(names())}. To add one, "
                      f"{HOW_TO_REGISTER}")


def robot_config(value: RobotConfig | dict[str, Any] | None) -> RobotConfig:
    """The ``robot`` section as its type's config: a mapping (``type`` plus that type's
    fields, from YAML or flags) is checked by the type's config class."""
    return selected_section(value, "robot", RobotConfig, "type", DEFAULT,
                            lambda name: robot_class(name).config_class, "type")


def features(cls: type[Robot]) -> set[str]:
    """The optional parts of the Robot interface that ``cls`` implements."""
    out = set()
    if cls.save_state is not Robot.save_state and cls.restore_state is not Robot.restore_state:
        out.add("snapshots")
    if cls.expert_action is not Robot.expert_action:
        out.add("expert")
    return out


def make_robot(config: RobotConfig) -> Robot:
    """A robot of the type ``config`` belongs to (not yet connected)."""
    return robot_class(type_name(config))(config)

"""Robots: one interface, robot types chosen by name.

- ``Robot``, ``RobotConfig``, ``Observation``, ``StepResult``, ``Snapshot``: the interface
  (``connect / observe / act / reset / close``, a context manager; optional snapshots and
  scripted expert);
- ``MetaWorldRobot`` (type ``metaworld``) and ``SyntheticRobot`` (type ``synthetic``) with
  their configs;
- ``registry``: ``robot_class(name)``, ``robot_config(mapping)``, ``make_robot(config)``,
  ``features(cls)``, and the entry-point group ``GROUP`` (``vlac.robots``) through which other
  packages add robot types (docs/robots.md).
"""

from vlac.edge.robots import registry
from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
from vlac.edge.robots.robot import Observation, Robot, RobotConfig, Snapshot, StepResult
from vlac.edge.robots.synthetic import SyntheticRobot, SyntheticRobotConfig

__all__ = ["MetaWorldRobot", "MetaWorldRobotConfig", "Observation", "Robot", "RobotConfig",
           "Snapshot", "StepResult", "SyntheticRobot", "SyntheticRobotConfig", "registry"]

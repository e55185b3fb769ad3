"""The robot interface every robot implements, simulated or real.

A robot is ``connect / observe / act / reset / close`` and a context manager::

    with MetaWorldRobot(cfg) as robot:
        obs = robot.reset()
        while True:
            result = robot.act(action)       # 4-dim delta end-effector action in [-1, 1]
            if result.done: break

Observations carry camera images (uint8, H x W x 3, upright), proprioception (end-effector
x, y, z and gripper opening, float32) and the task sentence. ``state`` is privileged
simulator state (None on a real robot): only scripted experts may read it.

A robot *type* is a Robot subclass with a ``config_class``: a dataclass subclassing
RobotConfig whose fields become the ``--robot.FIELD`` flags of ``vlac edge run --robot.type
NAME``. Meta-World and the synthetic robot are built in; a lab's own package registers more
under the ``vlac.robots`` entry-point group (``vlac.edge.robots.registry``; docs/robots.md has
a whole adapter). The constructor takes the config and does no I/O; ``connect`` does.

To bring a real arm: subclass Robot; ``connect`` opens the arm and cameras, ``observe`` grabs
the latest frames (resized to ``spec.cameras``) and reads the end-effector pose, ``act`` turns
the delta action into a Cartesian velocity or pose command at your control rate and returns
the next observation, ``reset`` drives to a home pose (and may ask the operator to reset the
scene), ``close`` stops the arm (it also runs after an error). ``success`` comes from a
detector you trust or stays False (the critic scores the episode in the cloud, and its done
probability can end it there); on the robot only ``done`` ends an episode, so keep a step
limit.
Then register it in your package's pyproject.toml (``[project.entry-points."vlac.robots"]``,
``my-arm = "my_lab.arm:MyArm"``), pip install it, and run ``vlac edge run --robot.type
my-arm --robot.FIELD ...``.

Optional, for the features that need them (the edge process refuses those features at
start-up, by name, for a robot type that lacks them):

- ``save_state`` / ``restore_state``: return-and-explore (``--on-stall return``). A real
  robot can drive back to a recorded pose but cannot restore the world, so it leaves them out.
- ``expert_action(obs)``: a scripted expert, for ``--policy scripted``, the simulated
  operator (``--takeover-prob``) and the stall guide (``--on-stall guide``). Simulators only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from vlac.shared.wire import RobotSpec


@dataclass
class Observation:
    images: dict[str, np.ndarray]
    """camera -> (H, W, 3) uint8, upright."""
    proprio: np.ndarray
    """(4,) float32: end-effector x, y, z and gripper opening."""
    task: str
    """The instruction for this episode."""
    state: np.ndarray | None = None
    """Privileged simulator state for scripted experts; None on a real robot."""


@dataclass
class StepResult:
    observation: Observation
    success: bool
    """The task is achieved (from the simulator or a success detector)."""
    done: bool
    """The episode is over: success (if terminate_on_success) or the step limit."""
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Snapshot:
    """A saved robot/world state that ``restore_state`` can return to."""

    step: int
    data: Any


class RobotConfig:
    """Base of every robot type's settings (the ``robot`` section of the edge process).

    Subclasses are dataclasses; each field (``opt(default, "help")``) becomes a flag
    ``--robot.FIELD``. ``seed`` also seeds the edge process's policy and simulated operator:
    declare it as a field to make it a flag (it is 0 otherwise).
    """

    seed: int = 0

    @classmethod
    def config_for(cls, type_name: str | None) -> type:
        """The config class of robot type ``type_name`` (None: the default type); the CLI
        asks before parsing, to build that type's flags."""
        from vlac.edge.robots.registry import robot_class

        return robot_class(type_name).config_class

    @classmethod
    def type_help(cls) -> str:
        from vlac.edge.robots.registry import describe_types

        return describe_types()


class Robot(abc.ABC):
    spec: RobotSpec
    config_class: ClassVar[type[RobotConfig]]
    """The dataclass of this robot type's settings; the constructor takes one."""
    task_id: str = ""
    """A short stable name of the task (e.g. push-v3), recorded with every episode."""

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def observe(self) -> Observation: ...

    @abc.abstractmethod
    def act(self, action: np.ndarray) -> StepResult: ...

    @abc.abstractmethod
    def reset(self) -> Observation: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def save_state(self) -> Snapshot:
        raise NotImplementedError(f"{type(self).__name__} cannot save its world state")

    def restore_state(self, snapshot: Snapshot) -> Observation:
        raise NotImplementedError(f"{type(self).__name__} cannot restore a world state; "
                                  "ask the operator to reset instead")

    def expert_action(self, obs: Observation) -> np.ndarray:
        """A scripted expert's action for ``obs`` (simulators, from ``obs.state``)."""
        raise NotImplementedError(f"{type(self).__name__} has no scripted expert")

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

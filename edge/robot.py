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

To bring a real arm: subclass Robot; ``connect`` opens the arm and cameras, ``observe`` grabs
the latest frames (resized to ``spec.cameras``) and reads the end-effector pose, ``act`` turns
the delta action into a Cartesian velocity or pose command at your control rate and returns
the next observation, ``reset`` drives to a home pose (and may ask the operator to reset the
scene), ``close`` stops the arm. ``success`` comes from a detector you trust or stays False
(the critic's done signal then ends episodes). ``save_state``/``restore_state`` are optional:
a real robot can drive back to a recorded pose but cannot restore the world, so it raises
NotImplementedError and return-and-explore falls back to an operator reset.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

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


class Robot(abc.ABC):
    spec: RobotSpec

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

    def __enter__(self) -> Robot:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Human-in-the-loop: the operator interface and its implementations.

Every control step the agent asks the operator ``poll(obs)``; the answer is one of

- ``TakeOver(action)``: act with this action instead of the policy (the step is recorded with
  ``intervention=True``, later used as demonstration data, never as a PPO sample);
- ``RequestReset()``: end this episode now and start a new one;
- ``ReturnTo(name)``: send the robot back to a saved state (return-and-explore);
- ``None``: let the policy act.

``ScriptedExpert`` is the operator in simulation (Meta-World's scripted policies, or a robot
type's own ``expert_action``).
``KeyboardTeleop`` and ``SpaceMouseTeleop`` are the operators for people; each reads an
input source (a live device, or a recorded stream in tests) through the same interface.
"""

from __future__ import annotations

import abc
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from vlac.edge.robots.robot import Observation


@dataclass(frozen=True)
class TakeOver:
    action: np.ndarray


@dataclass(frozen=True)
class RequestReset:
    reason: str = "operator"


@dataclass(frozen=True)
class ReturnTo:
    name: str = "latest"


Command = TakeOver | RequestReset | ReturnTo


class Operator(abc.ABC):
    """What a person (or a script standing in for one) can do to a running robot."""

    def on_episode_start(self, task: str) -> None:  # noqa: B027 - optional hook
        """Called after every reset."""

    @abc.abstractmethod
    def poll(self, obs: Observation) -> Command | None: ...

    def wants_snapshot(self) -> bool:
        """True to have the agent save the robot's state after this step (a promising state
        to return to)."""
        return False


# ----------------------------------------------------------------------------- simulation
class ScriptedExpert(Operator):
    """A scripted expert as the operator: Meta-World's scripted policy for ``task``, or
    ``task`` as a function from an observation to the expert's action (a robot type's own
    ``Robot.expert_action``).

    ``always=True`` acts every step (demonstration collection); otherwise it acts only while
    engaged: ``engage(steps)`` takes over for that many steps (human-guided exploration),
    and ``takeover_prob`` engages it at random for ``takeover_steps`` steps. ``noise`` adds
    Gaussian noise to its actions (diverse demonstrations, with some failures).
    """

    def __init__(self, task: str | Callable[[Observation], np.ndarray], *,
                 always: bool = False, noise: float = 0.0, takeover_prob: float = 0.0,
                 takeover_steps: int = 20, seed: int = 0) -> None:
        if callable(task):  # a robot's own expert (Robot.expert_action)
            self._act = task
        else:
            from metaworld.policies import ENV_POLICY_MAP

            if task not in ENV_POLICY_MAP:
                raise ValueError(f"no scripted expert for task {task!r}")
            policy = ENV_POLICY_MAP[task]()
            self._act = lambda obs: policy.get_action(obs.state)
        self.always = always
        self.noise = noise
        self.takeover_prob = takeover_prob
        self.takeover_steps = takeover_steps
        self._left = 0
        self._rng = np.random.default_rng(seed)

    def engage(self, steps: int) -> None:
        self._left = max(self._left, steps)

    def disengage(self) -> None:
        self._left = 0

    @property
    def engaged(self) -> bool:
        return self.always or self._left > 0

    def expert_action(self, obs: Observation) -> np.ndarray:
        if obs.state is None:
            raise RuntimeError("the scripted expert needs simulator state (obs.state); it "
                               "only works with simulated robots")
        a = np.asarray(self._act(obs), np.float64)
        if self.noise:
            a = a + self._rng.normal(0.0, self.noise, a.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def poll(self, obs: Observation) -> Command | None:
        if not self.always and self._left == 0 and self.takeover_prob > 0 \
                and self._rng.random() < self.takeover_prob:
            self._left = self.takeover_steps
        if not self.engaged:
            return None
        if self._left > 0:
            self._left -= 1
        return TakeOver(self.expert_action(obs))


class StallWatch(Operator):
    """Human-in-the-loop on a measurable trigger: the critic's progress.

    Every ``check_every`` steps it asks ``progress(first_obs, obs)``: the critic's progress
    delta from the episode's first frame to now (injected, so the edge never imports the
    critic; ``vlac.edge.hitl.progress.CriticProgress`` asks the critic service without blocking,
    and None means "no answer yet": the check is skipped). A new best marks the state as
    promising (``wants_snapshot``). When progress has not beaten the best by ``min_gain`` for
    ``patience`` checks in a row, or fell more than ``regress`` below it, the episode has
    stalled, and then:

    - ``on_stall="return"`` (return and explore): ``ReturnTo("best")`` ends the episode and
      the caller starts the next one from the promising snapshot;
    - ``on_stall="guide"`` (human-guided exploration): the ``guide`` operator (a person, or
      the scripted expert standing in for one) takes over for ``guide_steps`` steps (0: for
      the rest of the episode, as in HG-DAgger); those
      steps are marked as interventions (demonstration data, never PPO samples).

    At most ``max_triggers`` per episode. ``triggers`` counts them.
    """

    def __init__(self, progress: Callable[[Observation, Observation], float | None], *,
                 on_stall: str = "guide", guide: ScriptedExpert | None = None,
                 check_every: int = 10, patience: int = 2, min_gain: float = 0.02,
                 regress: float = 0.1, guide_steps: int = 20, max_triggers: int = 2) -> None:
        if on_stall not in ("guide", "return"):
            raise ValueError(f"on_stall must be 'guide' or 'return', not {on_stall!r}")
        if on_stall == "guide" and guide is None:
            raise ValueError("on_stall='guide' needs a guide operator")
        self.progress, self.on_stall, self.guide = progress, on_stall, guide
        self.check_every, self.patience, self.min_gain = check_every, patience, min_gain
        self.regress, self.guide_steps, self.max_triggers = regress, guide_steps, max_triggers
        self.triggers = 0
        self.on_episode_start("")

    def on_episode_start(self, task: str) -> None:
        self._first: Observation | None = None
        self._steps = self._flat = self._episode_triggers = 0
        self._best = -np.inf
        self._snap = False
        if self.guide is not None:
            self.guide.disengage()

    def wants_snapshot(self) -> bool:
        snap, self._snap = self._snap, False
        return snap

    def poll(self, obs: Observation) -> Command | None:
        if self._first is None:
            self._first = obs
        if self.guide is not None and self.guide.engaged:
            return self.guide.poll(obs)
        self._steps += 1
        if self._steps % self.check_every or self._episode_triggers >= self.max_triggers:
            return None
        measured = self.progress(self._first, obs)
        if measured is None or not np.isfinite(measured):
            return None  # no answer yet (the critic is remote): skip this check
        p = float(measured)
        if p > self._best + self.min_gain:
            self._best, self._flat, self._snap = p, 0, True
            return None
        self._flat += 1
        if self._flat < self.patience and p > self._best - self.regress:
            return None
        self._flat = 0
        self._episode_triggers += 1
        self.triggers += 1
        if self.on_stall == "return":
            return ReturnTo("best")
        self.guide.engage(self.guide_steps or sys.maxsize)  # type: ignore[union-attr]
        return self.guide.poll(obs)  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- people
class KeyboardTeleop(Operator):
    """Keyboard teleoperation.

    Keys (one event per key press; ``source()`` returns the keys pressed since the last poll):
    ``w/s`` +y/-y, ``a/d`` -x/+x, ``r/f`` +z/-z (up/down), ``space`` toggles the gripper,
    ``t`` toggles takeover (while on, every step is the operator's, moving only on keys),
    ``x`` requests a reset, ``b`` returns to the last saved state.
    """

    MOVES: ClassVar[dict[str, tuple[float, float]]] = {
        "w": (0, 1.0), "s": (0, -1.0), "a": (-1.0, 0), "d": (1.0, 0)}

    def __init__(self, source: Callable[[], list[str]], step: float = 0.5) -> None:
        self.source = source
        self.step = step
        self.active = False
        self.gripper = -1.0  # open

    def on_episode_start(self, task: str) -> None:
        self.gripper = -1.0

    def poll(self, obs: Observation) -> Command | None:
        action = np.zeros(4, np.float32)
        moved = False
        for key in self.source():
            if key == "x":
                return RequestReset("keyboard")
            if key == "b":
                return ReturnTo("latest")
            if key == "t":
                self.active = not self.active
            elif key == " ":
                self.gripper = -self.gripper
                moved = True
            elif key in self.MOVES:
                dx, dy = self.MOVES[key]
                action[0] += dx * self.step
                action[1] += dy * self.step
                moved = True
            elif key in ("r", "f"):
                action[2] += self.step if key == "r" else -self.step
                moved = True
        if not (self.active or moved):
            return None
        self.active = True  # a movement key takes over
        action[3] = self.gripper
        return TakeOver(np.clip(action, -1, 1))


@dataclass
class SpaceMouseState:
    """One reading of a 3D mouse: translation axes in [-1, 1] and its two buttons."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    buttons: tuple[int, int] = (0, 0)


class SpaceMouseTeleop(Operator):
    """3D-mouse teleoperation: push the cap to move; past ``deadzone`` the operator takes
    over. Left button toggles the gripper, right button requests a reset.

    ``source()`` returns the latest SpaceMouseState: from a recorded stream in tests, or from
    the device (e.g. a ``pyspacemouse.read()`` wrapper; not bundled, it needs the HID device).
    """

    def __init__(self, source: Callable[[], SpaceMouseState], scale: float = 1.0,
                 deadzone: float = 0.05) -> None:
        self.source = source
        self.scale = scale
        self.deadzone = deadzone
        self.gripper = -1.0
        self._prev_buttons = (0, 0)

    def on_episode_start(self, task: str) -> None:
        self.gripper = -1.0

    def poll(self, obs: Observation) -> Command | None:
        s = self.source()
        pressed = tuple(int(b and not p) for b, p in zip(s.buttons, self._prev_buttons,
                                                         strict=True))
        self._prev_buttons = s.buttons
        if pressed[1]:
            return RequestReset("spacemouse")
        if pressed[0]:
            self.gripper = -self.gripper
        move = np.array([s.x, s.y, s.z], np.float32)
        if np.abs(move).max() < self.deadzone and not pressed[0]:
            return None
        action = np.append(np.clip(move * self.scale, -1, 1), self.gripper).astype(np.float32)
        return TakeOver(action)


@dataclass
class Recorded:
    """A recorded input stream: one entry per control step, replayed in order (tests,
    or replaying a session). Past the end it yields ``default``."""

    events: Iterable
    default: object = field(default_factory=list)

    def __post_init__(self) -> None:
        self._it: Iterator = iter(self.events)

    def __call__(self):
        return next(self._it, self.default)


def random_keys(n: int, seed: int = 0) -> list[list[str]]:
    """A random key stream (for fuzzing the keyboard adapter)."""
    rng = random.Random(seed)
    keys = ["w", "a", "s", "d", "r", "f", " ", "t"]
    return [[rng.choice(keys)] if rng.random() < 0.5 else [] for _ in range(n)]

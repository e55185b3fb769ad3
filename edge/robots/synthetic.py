"""A synthetic robot: a point that moves to a goal, rendered as small image-like frames.

Robot type ``synthetic``: no simulator, no GPU, milliseconds per step, so tests, the stack
and a first `vlac edge run` need nothing but numpy. The "arm" is a point in [-1, 1]^3 with a
gripper; an action moves it by ``step_size`` times its first three values and sets the
gripper. Each reset draws a goal and a start from the robot's seeded RNG; the episode
succeeds within ``goal_radius`` of the goal. Frames show the arm as a white square (larger
when higher) and the goal as a green one. It has everything a simulator offers: snapshots
(return-and-explore) and a scripted expert (straight to the goal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlac.edge.robots.robot import Observation, Robot, RobotConfig, Snapshot, StepResult
from vlac.shared.config import check, check_id, opt
from vlac.shared.wire import RobotSpec


@dataclass
class SyntheticRobotConfig(RobotConfig):
    task: str = opt("reach the goal", "Task sentence of every episode.")
    task_id: str = opt("synthetic-reach", "Task name recorded with each episode.")
    camera: str = opt("corner", "Camera name of the frames.")
    image_size: int = opt(128, "Square frame size in pixels (ingest's default spec: 128).")
    seed: int = opt(0, "Seed of goals and start positions.")
    max_steps: int = opt(50, "Step limit of an episode.")
    step_size: float = opt(0.1, "How far a full action moves the arm in one step.")
    goal_radius: float = opt(0.15, "Distance to the goal that counts as success.")
    terminate_on_success: bool = opt(True, "End the episode as soon as the task succeeds.")

    def __post_init__(self) -> None:
        check(bool(self.task.strip()), "task", "give the task sentence")
        check_id(self.task_id, "task_id")
        check(8 <= self.image_size <= 1024, "image_size", "use 8 to 1024 pixels")
        check(self.max_steps >= 1, "max_steps", "must be >= 1")
        check(self.step_size > 0, "step_size", "must be > 0")
        check(self.goal_radius > 0, "goal_radius", "must be > 0")

    def spec(self) -> RobotSpec:
        s = self.image_size
        return RobotSpec(cameras={self.camera: (s, s, 3)}, proprio_dim=4, action_dim=4,
                         action_low=(-1.0,) * 4, action_high=(1.0,) * 4)


class SyntheticRobot(Robot):
    config_class = SyntheticRobotConfig

    def __init__(self, cfg: SyntheticRobotConfig) -> None:
        self.cfg = cfg
        self.spec = cfg.spec()
        self.task_id = cfg.task_id
        self._rng = np.random.default_rng(cfg.seed)
        self._pos = np.zeros(3)
        self._goal = np.zeros(3)
        self._gripper = -1.0
        self._step = 0
        self._background: np.ndarray | None = None
        self._obs: Observation | None = None

    def connect(self) -> None:
        s = self.cfg.image_size
        yy, xx = np.mgrid[0:s, 0:s]
        grey = ((xx + yy) * 96 // (2 * s) + 32).astype(np.uint8)
        self._background = np.stack([grey, grey, grey + 16], axis=-1)

    def close(self) -> None:
        self._background = None

    def _px(self, v: float) -> int:
        return round((v + 1.0) / 2.0 * (self.cfg.image_size - 1))

    def _render(self) -> np.ndarray:
        if self._background is None:
            raise RuntimeError("robot is not connected; use `with SyntheticRobot(cfg) as r:` "
                               "or call connect() first")
        img = self._background.copy()
        s = self.cfg.image_size
        r = max(1, s // 32)
        gx, gy = self._px(self._goal[0]), self._px(-self._goal[1])
        img[max(0, gy - r):gy + r + 1, max(0, gx - r):gx + r + 1] = (40, 220, 40)
        r = max(1, round(s / 24 * (1.5 + self._pos[2])))
        ax, ay = self._px(self._pos[0]), self._px(-self._pos[1])
        img[max(0, ay - r):ay + r + 1, max(0, ax - r):ax + r + 1] = 255
        return img

    def _make_obs(self) -> Observation:
        proprio = np.append(self._pos, self._gripper).astype(np.float32)
        state = np.concatenate([self._pos, [self._gripper], self._goal])
        self._obs = Observation(images={self.cfg.camera: self._render()}, proprio=proprio,
                                task=self.cfg.task, state=state)
        return self._obs

    def reset(self) -> Observation:
        self._goal = self._rng.uniform(-0.8, 0.8, 3)
        self._pos = self._rng.uniform(-0.8, 0.8, 3)
        self._gripper, self._step = -1.0, 0
        return self._make_obs()

    def observe(self) -> Observation:
        if self._obs is None:
            raise RuntimeError("call reset() before observe()")
        return self._obs

    def act(self, action: np.ndarray) -> StepResult:
        if self._obs is None:
            raise RuntimeError("call reset() before act()")
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (4,) or not np.isfinite(a).all():
            raise ValueError(f"action must be 4 finite values (dx, dy, dz, gripper), got {a}")
        a = np.clip(a, -1.0, 1.0)
        self._pos = np.clip(self._pos + self.cfg.step_size * a[:3], -1.0, 1.0)
        self._gripper = float(a[3])
        self._step += 1
        success = bool(np.linalg.norm(self._pos - self._goal) < self.cfg.goal_radius)
        truncated = self._step >= self.cfg.max_steps
        done = truncated or (success and self.cfg.terminate_on_success)
        return StepResult(self._make_obs(), success, done, truncated and not success,
                          {"step": self._step})

    def expert_action(self, obs: Observation) -> np.ndarray:
        """Straight to the goal at full speed, gripper open (reads the privileged state)."""
        if obs.state is None:
            raise RuntimeError("the scripted expert needs simulator state (obs.state)")
        pos, goal = obs.state[:3], obs.state[4:7]
        return np.append(np.clip((goal - pos) / self.cfg.step_size, -1.0, 1.0), -1.0)

    def save_state(self) -> Snapshot:
        return Snapshot(self._step, {"pos": self._pos.copy(), "goal": self._goal.copy(),
                                     "gripper": self._gripper})

    def restore_state(self, snapshot: Snapshot) -> Observation:
        d = snapshot.data
        self._pos, self._goal = d["pos"].copy(), d["goal"].copy()
        self._gripper, self._step = d["gripper"], snapshot.step
        return self._make_obs()

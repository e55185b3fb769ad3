"""Meta-World's simulated Sawyer arm behind the Robot interface.

Any ``*-v3`` task by name. Each reset draws one of Meta-World's 50 goal/object layouts for the
task and one of the task's paraphrased instructions, from the robot's own seeded RNG. Headless
rendering is set up here (``MUJOCO_GL=egl`` unless already set) with fast render settings
(no multisampling, shadows or reflections: ~10x faster, measured in benchmarks/sim.py).
The ``corner*`` cameras render upside down in Meta-World; images are flipped upright here.
Robot type ``metaworld`` (the default of ``vlac edge run``): snapshots and a scripted expert.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlac.edge.robots.robot import Observation, Robot, RobotConfig, Snapshot, StepResult
from vlac.shared import tasks
from vlac.shared.config import check, opt
from vlac.shared.wire import RobotSpec

CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
_FLIPPED = {"corner", "corner2", "corner3", "corner4"}


@dataclass
class MetaWorldRobotConfig(RobotConfig):
    task: str = opt("push-v3", "Meta-World task name (ends in -v3).")
    camera: str = opt("corner", "Camera to render: " + ", ".join(CAMERAS) + ".")
    image_size: int = opt(128, "Square image size in pixels.")
    seed: int = opt(0, "Seed for layouts and instructions.")
    max_steps: int = opt(150, "Step limit of an episode (Meta-World allows up to 500).")
    terminate_on_success: bool = opt(True, "End the episode as soon as the task succeeds.")
    hide_goal: bool = opt(False, "Hide the goal marker Meta-World draws (a give-away in tasks "
                                 "whose goal is part of the scene).")
    instruction: int = opt(-1, "Which paraphrase to use (-1: a random one per episode).")
    fixed_layout: bool = opt(False, "Use the same goal/object layout every episode.")
    action_repeat: int = opt(1, "Simulator steps each action is held for: k > 1 decides once "
                                "every k steps (k times fewer decisions per episode, frames "
                                "only at decisions); max_steps still counts simulator steps.")
    layout_repeats: int = opt(1, "Episodes per drawn layout and instruction: k > 1 starts k "
                                 "consecutive episodes from the same state (groups of "
                                 "rollouts that the learner's group advantages compare).")

    def __post_init__(self) -> None:
        from vlac.shared.config import ConfigError

        if not self.task.endswith("-v3"):
            raise ConfigError(f"config field `task`: {self.task!r} is not a Meta-World v3 task; "
                              "names end in -v3, e.g. push-v3")
        check(self.camera in CAMERAS, "camera", f"{self.camera!r} is not one of {CAMERAS}")
        check(16 <= self.image_size <= 1024, "image_size", "use 16 to 1024 pixels")
        check(1 <= self.max_steps <= 500, "max_steps", "use 1 to 500 (Meta-World's limit)")
        check(self.layout_repeats >= 1, "layout_repeats", "use 1 or more")
        check(1 <= self.action_repeat <= self.max_steps, "action_repeat",
              f"use 1 to max_steps ({self.max_steps})")

    def spec(self) -> RobotSpec:
        s = self.image_size
        return RobotSpec(cameras={self.camera: (s, s, 3)}, proprio_dim=4, action_dim=4,
                         action_low=(-1.0,) * 4, action_high=(1.0,) * 4)


def _setup_headless() -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def task_names() -> list[str]:
    _setup_headless()
    import metaworld

    return sorted(metaworld.MT1.ENV_NAMES)


class MetaWorldRobot(Robot):
    config_class = MetaWorldRobotConfig

    def __init__(self, cfg: MetaWorldRobotConfig) -> None:
        self.cfg = cfg
        self.spec = cfg.spec()
        self.task_id = cfg.task
        self._expert: Any = None
        self._env: Any = None
        self._rng = random.Random(cfg.seed)
        self._step = 0
        self._task_text = tasks.instruction(cfg.task, index=max(cfg.instruction, 0))
        self._obs: Observation | None = None
        self._layout: Any = None
        self._repeats_left = 0

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        if self._env is not None:
            return
        _setup_headless()
        import metaworld

        if self.cfg.task not in metaworld.MT1.ENV_NAMES:
            raise ValueError(f"unknown Meta-World task {self.cfg.task!r}; known: "
                             f"{', '.join(sorted(metaworld.MT1.ENV_NAMES))}")
        self._mt1 = metaworld.MT1(self.cfg.task, seed=self.cfg.seed)
        cls = self._mt1.train_classes[self.cfg.task]
        env = cls(render_mode="rgb_array", camera_name=self.cfg.camera,
                  width=self.cfg.image_size, height=self.cfg.image_size)
        m = env.model
        m.vis.quality.offsamples = 0
        m.light_castshadow[:] = 0
        m.mat_reflectance[:] = 0
        self._goal_sites = [i for i in range(m.nsite) if "goal" in m.site(i).name]
        self._goal_rgba = m.site_rgba[self._goal_sites].copy()
        self._env = env
        self.set_goal_visible(not self.cfg.hide_goal)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def set_goal_visible(self, visible: bool) -> None:
        m = self._env.model
        for k, i in enumerate(self._goal_sites):
            m.site_rgba[i, 3] = self._goal_rgba[k, 3] if visible else 0.0

    # ------------------------------------------------------------------ robot
    @property
    def task(self) -> str:
        return self._task_text

    def _require(self) -> Any:
        if self._env is None:
            raise RuntimeError("robot is not connected; use `with MetaWorldRobot(cfg) as r:` "
                               "or call connect() first")
        return self._env

    def _render(self) -> np.ndarray:
        # Several robots in one process each own a GL context: make ours current first, or
        # this robot renders into (and reads back) another robot's framebuffer.
        viewer = self._env.mujoco_renderer._get_viewer(render_mode="rgb_array")
        viewer.make_context_current()
        img = self._env.render()
        if self.cfg.camera in _FLIPPED:
            img = img[::-1]
        return np.ascontiguousarray(img, dtype=np.uint8)

    def _make_obs(self, state: np.ndarray) -> Observation:
        proprio = np.asarray(state[:4], np.float32)
        return Observation(images={self.cfg.camera: self._render()}, proprio=proprio,
                           task=self._task_text, state=np.asarray(state, np.float64).copy())

    def reset(self) -> Observation:
        env = self._require()
        if self._repeats_left <= 0:  # draw the next layout and instruction
            tasks_ = self._mt1.train_tasks
            self._layout = tasks_[0] if self.cfg.fixed_layout else self._rng.choice(tasks_)
            if self.cfg.instruction >= 0:
                self._task_text = tasks.instruction(self.cfg.task, index=self.cfg.instruction)
            else:
                self._task_text = tasks.instruction(self.cfg.task, rng=self._rng)
            self._repeats_left = self.cfg.layout_repeats
        self._repeats_left -= 1
        env.set_task(self._layout)
        state, _ = env.reset()
        self._step = 0
        self._obs = self._make_obs(state)
        return self._obs

    def observe(self) -> Observation:
        if self._obs is None:
            raise RuntimeError("call reset() before observe()")
        return self._obs

    def act(self, action: np.ndarray) -> StepResult:
        env = self._require()
        if self._obs is None:
            raise RuntimeError("call reset() before act()")
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (4,):
            raise ValueError(f"action must have 4 values (dx, dy, dz, gripper), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError("action contains NaN or infinity")
        a = np.clip(a, -1.0, 1.0)
        for _ in range(self.cfg.action_repeat):  # held until the next decision
            state, reward, _term, _trunc, info = env.step(a)
            self._step += 1
            success = bool(info.get("success", 0.0) > 0.5)
            truncated = self._step >= self.cfg.max_steps
            done = truncated or (success and self.cfg.terminate_on_success)
            if done:
                break
        self._obs = self._make_obs(state)
        return StepResult(self._obs, success, done, truncated and not success,
                          {"step": self._step, "reward": float(reward)})

    def expert_action(self, obs: Observation) -> np.ndarray:
        """Meta-World's scripted policy for the task (raw: noise and clipping are the
        caller's)."""
        if self._expert is None:
            from metaworld.policies import ENV_POLICY_MAP

            if self.cfg.task not in ENV_POLICY_MAP:
                raise ValueError(f"no scripted expert for task {self.cfg.task!r}")
            self._expert = ENV_POLICY_MAP[self.cfg.task]()
        if obs.state is None:
            raise RuntimeError("the scripted expert needs simulator state (obs.state)")
        return np.asarray(self._expert.get_action(obs.state), np.float64)

    # ------------------------------------------------------------------ snapshots
    def save_state(self) -> Snapshot:
        """Full simulator state (MuJoCo physics + the task's Python-side state)."""
        import mujoco

        env = self._require()
        kind = mujoco.mjtState.mjSTATE_INTEGRATION
        phys = np.empty(mujoco.mj_stateSize(env.model, kind))
        mujoco.mj_getState(env.model, env.data, phys, kind)
        py = {k: copy.deepcopy(v) for k, v in vars(env).items() if _plain(v)}
        return Snapshot(self._step, {"physics": phys, "python": py, "obs": self._obs,
                                     "task": self._task_text})

    def restore_state(self, snapshot: Snapshot) -> Observation:
        import mujoco

        env = self._require()
        d = snapshot.data
        for k, v in d["python"].items():
            setattr(env, k, copy.deepcopy(v))
        mujoco.mj_setState(env.model, env.data, d["physics"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(env.model, env.data)
        self._step = snapshot.step
        self._task_text = d["task"]
        self._obs = self._make_obs(d["obs"].state)
        return self._obs


def _plain(v: Any) -> bool:
    """Python-side env attributes worth snapshotting: numbers, arrays and small containers
    of them (goal positions, path length, previous observation ...)."""
    if isinstance(v, (bool, int, float, np.ndarray, np.generic)):
        return True
    if isinstance(v, (list, tuple)) and len(v) < 64:
        return all(isinstance(x, (bool, int, float, np.ndarray, np.generic)) for x in v)
    return False

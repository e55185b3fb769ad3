"""The learning benchmark's oracle reward: Meta-World's own shaped reward as the learner's
progress signal (a reference for diagnosing the critic, never a product default).

``RewardRecorder`` wraps a ``MetaWorldRobot`` and keeps the reward of each ``act()`` of the
current episode (``StepResult.info["reward"]``; Meta-World v3 rewards lie in [0, 10], 10 at
success). ``OracleRewards`` is a ``vlac.cloud.critic.service.RewardSource``: the benchmark
registers each episode's frames and rewards right after writing it to the store, and the
learner, which hands over only the task and the frames, gets them back by a hash of the
frames' bytes (the store keeps pixels losslessly, so the reloaded array is identical).
"""

from __future__ import annotations

import hashlib

import numpy as np

MAX_REWARD = 10.0  # Meta-World v3's shaped rewards lie in [0, 10]


def frames_key(frames: np.ndarray) -> str:
    """A key of an episode's frames: their dtype, shape and bytes."""
    a = np.ascontiguousarray(frames)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


class RewardRecorder:
    """A robot that records the simulator's reward of every action of the current episode
    (``rewards[k]``: the reward after action k); everything else is the wrapped robot's."""

    def __init__(self, robot) -> None:
        self._robot = robot
        self.rewards: list[float] = []

    def __getattr__(self, name: str):
        return getattr(self._robot, name)

    def reset(self):
        self.rewards = []
        return self._robot.reset()

    def restore_state(self, snapshot):
        self.rewards = []
        return self._robot.restore_state(snapshot)

    def act(self, action):
        res = self._robot.act(action)
        if "reward" not in res.info:
            raise KeyError(f"{type(self._robot).__name__}.act() reports no 'reward' in its "
                           "info (MetaWorldRobot puts Meta-World's reward there)")
        self.rewards.append(float(res.info["reward"]))
        return res


class OracleRewards:
    """``RewardSource`` over registered episodes: for frames o_0 .. o_n-1 and rewards R[0 ..
    n-1] (R[k] after action k, so R[k] is the reward of o_k+1), the progress since the first
    frame is delta[t-1] = (R[t-1] - R[0]) / 10 for t = 1 .. n-1, done all zeros. The reward
    of o_0 itself is never observed (Meta-World scores states only after a step): R[0], the
    reward after the first action, stands in for it, so delta[0] is 0."""

    def __init__(self) -> None:
        self._rewards: dict[str, np.ndarray] = {}

    def register(self, frames: np.ndarray, rewards: list[float]) -> None:
        if len(rewards) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(rewards)} rewards: one reward "
                             "per action, one frame before each action")
        self._rewards[frames_key(frames)] = np.asarray(rewards, np.float64)

    def __len__(self) -> int:
        return len(self._rewards)

    def episode_rewards(self, task: str, frames: np.ndarray, stride: int = 1,
                        reference: np.ndarray | None = None, from_first: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """(delta, done) for the frame pairs the critic would score (``pair_indices``:
        (0, t) with ``from_first``, else (t, t + stride)), from the potential
        phi(o_j) = R[j - 1] / 10 (phi(o_0) = R[0] / 10)."""
        from vlac.cloud.critic.model import pair_indices

        key = frames_key(frames)
        if key not in self._rewards:
            raise KeyError(f"oracle rewards: no episode of {len(frames)} frames of {task!r} "
                           f"was registered with these frames ({len(self)} registered); the "
                           "benchmark registers each episode right after writing it")
        r = self._rewards[key]
        phi = np.concatenate([r[:1], r[:-1]]) / MAX_REWARD
        ia, ib = pair_indices(len(frames), stride, from_first)
        delta = (phi[ib] - phi[ia]).astype(np.float32)
        return delta, np.zeros(len(delta), np.float32)

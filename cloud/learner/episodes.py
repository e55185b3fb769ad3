"""The store's episodes as the learner sees them: which ones are new, and each one featurised.

``EpisodeData`` is what an algorithm trains on (``algorithms.base.UpdateBatch``): the steps'
observations as the trained actor takes them (``actors.LearnerActor.observe``: the small
actor's image features, computed once per frame since its encoders are frozen, or a
transformers actor's raw frames), the robot's behaviour log-probs,
policy versions and intervention flags, and the rewards of ``rewards.shape_rewards``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vlac.cloud.store.episodes import Episode, EpisodeStore

if TYPE_CHECKING:
    from vlac.cloud.learner.actors import LearnerActor


def episode_key(info: dict) -> str:
    return f"{info['robot_id']}/{info['episode_id']}"


@dataclass
class EpisodeData:
    """One consumed episode, featurised, with its rewards."""

    key: str
    success: bool
    text: np.ndarray  # the task sentence: (384,) embedding (small actor) or 0-d str (hf)
    feat: np.ndarray  # per step: (T, 16, 1280) float16 features or (T, H, W, 3) uint8 frames
    proprio: np.ndarray
    tokens: np.ndarray  # (T, A) int64
    logprob: np.ndarray  # behaviour log-probs (T,)
    policy_version: np.ndarray
    intervention: np.ndarray
    rewards: np.ndarray  # (n_used,)
    terminal: bool
    task: str = ""  # the group of ``group_advantages``
    start: str = ""  # fingerprint of the first observation: rollouts from the same state


    def __len__(self) -> int:
        return len(self.proprio)


class EpisodeLoader:
    """Reads episodes from the (read-only) store and turns them into the trained actor's
    observations (``LearnerActor.observe``), seeing through ``camera``."""

    def __init__(self, store: EpisodeStore, actor: LearnerActor, camera: str) -> None:
        self.store, self.actor, self.camera = store, actor, camera

    def unconsumed(self, consumed: set[str]) -> list[dict]:
        """Complete fleet episodes (not demonstrations) not in ``consumed``, oldest first."""
        new = [e for e in self.store.list_episodes()
               if e.get("source") != "demo" and episode_key(e) not in consumed]
        return sorted(new, key=lambda e: (e["completed_at"], episode_key(e)))

    def frames(self, info: dict) -> tuple[Episode, np.ndarray]:
        ep = self.store.load_episode(info["robot_id"], info["episode_id"])
        if self.camera not in ep.steps.images:
            raise ValueError(f"episode {episode_key(info)} has no camera {self.camera!r} "
                             f"(it has {sorted(ep.steps.images)}); set --camera")
        return ep, ep.steps.images[self.camera]

    def text(self, task: str) -> np.ndarray:
        return self.actor.text(task)

    def featurise(self, info: dict, ep: Episode, frames: np.ndarray, rewards: np.ndarray,
                  terminal: bool) -> EpisodeData:
        s = ep.steps
        return EpisodeData(
            key=episode_key(info), success=bool(info["outcome"]["success"]),
            task=info.get("task_id") or ep.task, text=self.text(ep.task),
            feat=self.actor.observe(frames), proprio=s.proprio,
            tokens=s.action_tokens.astype(np.int64), logprob=s.logprob,
            policy_version=s.policy_version, intervention=s.intervention.astype(bool),
            rewards=rewards, terminal=terminal, start=start_fingerprint(frames, s.proprio))


def start_fingerprint(frames: np.ndarray, proprio: np.ndarray) -> str:
    """Hash of an episode's first image and proprioception: episodes a simulator started
    from the same state share it (``--robot.layout-repeats``), real resets never do."""
    if not len(frames):
        return ""
    h = hashlib.sha1(np.ascontiguousarray(frames[0]).tobytes())
    h.update(np.ascontiguousarray(proprio[0], np.float32).tobytes())
    return h.hexdigest()[:16]

"""An episode's rewards: where they come from (the critic, or the robot's success flag) and
how they are shaped.

``critic``: the RewardSource (in-process critic or ``vlac critic serve``) scores the progress
since the first frame phi_t = delta(o_0, o_t+1) and the rewards are its differences
(``progress_rewards``: an episode's return is its final progress), or with ``pairs
consecutive`` r_t = delta(o_t, o_t+k); a success the robot reported adds ``success_reward`` at
its last step, where the episode ends (no bootstrap); so does the first step whose done
probability exceeds ``done_threshold`` (off by default); otherwise the value of the last
observation bootstraps it. ``sparse``: ``success_reward`` at the last step of a successful
episode, 0 elsewhere. docs/training.md ("Rewards and advantages") says why these defaults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlac.cloud.critic.service import RewardSource
from vlac.shared.config import ConfigError

if TYPE_CHECKING:
    from vlac.cloud.learner.config import RewardsConfig


def reward_source(cfg: RewardsConfig) -> RewardSource | None:
    """The RewardSource the config names (None for sparse rewards)."""
    if cfg.mode == "sparse":
        return None
    if cfg.service:
        from vlac.cloud.critic.service import RewardClient

        return RewardClient(cfg.service, cfg.timeout_s)
    if cfg.critic is not None:
        from vlac.cloud.critic.model import SmallVLACCritic
        from vlac.cloud.critic.service import InProcessRewards

        return InProcessRewards(SmallVLACCritic.load(cfg.critic))
    raise ConfigError("config field `rewards.critic`: rewards.mode critic needs "
                      "--rewards.critic CRITIC.pt or --rewards.service ADDRESS (or use "
                      "--rewards.mode sparse)")


def critic_scores(source: RewardSource | None, cfg: RewardsConfig, task: str,
                  frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The critic's (delta, done probability) per step pair (zeros for sparse rewards)."""
    if cfg.mode == "critic" and len(frames) >= 2:
        first = cfg.pairs == "from_first"
        delta, done = source.episode_rewards(task, frames, cfg.stride, from_first=first)
        delta = progress_rewards(delta) if first else np.asarray(delta, np.float32)
        return delta, np.asarray(done, np.float32)
    return (np.zeros(max(0, len(frames) - 1), np.float32),
            np.zeros(max(0, len(frames) - 1), np.float32))


def shape_rewards(mode: str, n_steps: int, success: bool, delta: np.ndarray | None = None,
                  done_prob: np.ndarray | None = None, done_threshold: float = 1.0,
                  success_reward: float = 1.0) -> tuple[np.ndarray, bool]:
    """Rewards of an episode's first n_used steps, and whether it ended there (terminal).

    Steps are (o_t, a_t); the observation after the last action is not recorded, so
    ``delta[t]``/``done_prob[t]`` (n_steps - 1 of them) judge o_t -> o_t+1. A non-terminal
    episode stops one step before its end and bootstraps from the value of o_n_used.
    ``success_reward`` is added at the last step of an episode the robot reported as a
    success (``sparse`` is that alone).
    """
    if mode == "sparse":
        if success:
            r = np.zeros(n_steps, np.float32)
            r[-1] = success_reward
            return r, True
        return np.zeros(max(0, n_steps - 1), np.float32), False
    delta = np.asarray(delta if delta is not None else [], np.float32)
    done_prob = np.asarray(done_prob if done_prob is not None else [], np.float32)
    over = np.flatnonzero(done_prob > done_threshold)
    if len(over):
        r = delta[:over[0] + 1].copy()
        if success:
            r[-1] += success_reward
        return r, True
    if success:  # the last action's progress is unseen: reward 0 (+ the bonus), then the end
        return np.concatenate([delta, np.full(1, success_reward, np.float32)]), True
    return delta, False


def progress_rewards(phi: np.ndarray) -> np.ndarray:
    """Rewards from the progress since the start, phi[t] = delta(o_0, o_t+1): the potential
    differences r_t = phi[t] - phi[t-1] (phi before the first step is 0). An episode's
    return is then its final progress whatever its length, where summed consecutive-pair
    deltas grow with every small step a critic scores slightly positive."""
    phi = np.asarray(phi, np.float32)
    return np.diff(np.concatenate([np.zeros(1, np.float32), phi]))

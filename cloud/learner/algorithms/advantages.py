"""PPO's advantages: GAE (pure, tested against a loop) and the advantage estimators, each a
small registered function (``--algorithm.advantage``: ``gae``, ``group``, ``horizon``) over
the batch's PPO samples (``ppo.build_batch``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vlac.cloud.learner.algorithms.ppo import PPOConfig
    from vlac.cloud.learner.episodes import EpisodeData


# ---------------------------------------------------------------------- GAE
def gae(rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: float,
        gamma: float = 0.99, lam: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over one trajectory (Schulman et al. 2016, eq. 16).

    ``dones[t]`` is 1 when the episode ended after step t (no bootstrap past it);
    ``last_value`` bootstraps a trajectory cut before its end. Returns (advantages, returns).
    """
    t_max = len(rewards)
    adv = np.zeros(t_max, np.float64)
    last = 0.0
    for t in reversed(range(t_max)):
        next_value = last_value if t == t_max - 1 else values[t + 1]
        not_done = 1.0 - float(dones[t])
        delta = rewards[t] + gamma * next_value * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        adv[t] = last
    return adv.astype(np.float32), (adv + values).astype(np.float32)


# ---------------------------------------------------------------------- advantage estimators
@dataclass(frozen=True)
class Estimator:
    """``fn(episodes, samples, cfg) -> b_advantages`` over the batch's PPO samples, whose
    ``b_episode``/``b_step`` columns say where each comes from (``b_advantages`` holds GAE's
    when it is called). Estimators that do not ``use_values`` judge an episode by its own
    return: only the steps before its first takeover are samples, the value loss is off, the
    advantages are not renormalised per minibatch, and an all-zero batch is no signal."""

    fn: Callable[[list[EpisodeData], dict[str, np.ndarray], PPOConfig], np.ndarray]
    uses_values: bool


ADVANTAGES: dict[str, Estimator] = {}


def advantage_estimator(name: str, *, uses_values: bool = False) -> Callable:
    """Register ``fn`` as ``--algorithm.advantage NAME``."""
    def add(fn):
        ADVANTAGES[name] = Estimator(fn, uses_values)
        return fn
    return add


def window_sums(rewards: np.ndarray, horizon: int, n: int) -> np.ndarray:
    """(n,) sum of rewards[t:t+horizon] for each step t (0 past the rewards' end)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(rewards, np.float64))])
    t = np.arange(n)
    hi = np.minimum(t + horizon, len(rewards))
    lo = np.minimum(t, len(rewards))
    return (c[hi] - c[lo]).astype(np.float32)


def group_advantages(scores: np.ndarray, groups: list[str],
                     alone: str = "batch") -> np.ndarray:
    """Each score minus the mean score of its group, scaled by the standard deviation of
    the result over the batch. A group of one is compared with the whole batch's mean
    (``alone="batch"``) or not at all (``alone="zero"``: advantage 0)."""
    scores = np.asarray(scores, np.float64)
    names = np.asarray(groups)
    base = np.full(len(scores), scores.mean() if len(scores) else 0.0)
    if alone == "zero":
        base = scores.copy()
    for g in set(groups):
        m = names == g
        if m.sum() >= 2:
            base[m] = scores[m].mean()
    adv = scores - base
    std = adv.std()
    return (adv / std if std > 1e-8 else adv).astype(np.float32)


def before_takeover(ep: EpisodeData) -> int:
    """Steps of an episode before the operator's first takeover: an episode an operator
    rescued must not credit the policy's steps with the operator's success (which would
    reward stalling, since a stall is what calls the operator)."""
    taken = np.flatnonzero(ep.intervention[:len(ep.rewards)])
    return int(taken[0]) if len(taken) else len(ep.rewards)


def _shrink_negative(adv: np.ndarray, scale: float) -> np.ndarray:
    return adv if scale == 1 else np.where(adv < 0, adv * scale, adv).astype(np.float32)


@advantage_estimator("gae", uses_values=True)
def gae_advantages(episodes, b, cfg) -> np.ndarray:
    """GAE's (computed per episode in ``build_batch``)."""
    return b["b_advantages"]


def episode_groups(episodes: list[EpisodeData], group_by: str) -> list[str]:
    """Each episode's group: its task, or (``start``) its task and first observation."""
    if group_by == "start":
        return [f"{ep.task}@{ep.start}" for ep in episodes]
    return [ep.task for ep in episodes]


@advantage_estimator("group")
def episode_group_advantages(episodes, b, cfg) -> np.ndarray:
    """Every sample of an episode gets ``group_advantages`` of its return (before any
    takeover) among its group's episodes (``--algorithm.group-by``: its task's, or those
    that started from the same state, GRPO-style, an episode alone in the batch then
    getting 0), spread over the episode's samples so that each
    episode weighs the same: A_episode x mean samples per episode / the episode's samples.
    Failures run to the step limit and successes stop early, so with A per step the
    failures' many steps would outweigh the successes' few, and PPO would mostly push
    sampled tokens down, flattening the policy."""
    used = [i for i, ep in enumerate(episodes) if len(ep.rewards)]
    score = np.zeros(len(episodes), np.float32)
    groups = episode_groups([episodes[i] for i in used], cfg.group_by)
    score[used] = group_advantages([episodes[i].rewards[:before_takeover(episodes[i])].sum()
                                    for i in used], groups,
                                   alone="zero" if cfg.group_by == "start" else "batch")
    counts = np.bincount(b["b_episode"], minlength=len(episodes))
    parts = [np.full(counts[i], score[i], np.float32) / counts[i] for i in used if counts[i]]
    if not parts:
        return np.zeros(0, np.float32)
    adv = (np.concatenate(parts) * np.mean(counts[counts > 0])).astype(np.float32)
    return _shrink_negative(adv, cfg.negative_scale)


@advantage_estimator("horizon")
def horizon_advantages(episodes, b, cfg) -> np.ndarray:
    """Each sample gets the sum of its episode's next ``horizon`` rewards (before any
    takeover), then ``group_advantages`` of that among its task's samples."""
    sums = {i: window_sums(ep.rewards[:before_takeover(ep)], cfg.horizon, len(ep.rewards))
            for i, ep in enumerate(episodes) if len(ep.rewards)}
    adv = np.concatenate([np.zeros(0, np.float32)] + [
        s[b["b_step"][b["b_episode"] == i]] for i, s in sums.items()])
    if len(adv):
        adv = group_advantages(adv, [episodes[i].task for i in b["b_episode"]])
    return _shrink_negative(adv, cfg.negative_scale)

"""`vlac learner run`: PPO on the fleet's episodes as they arrive in the store.

One update, top to bottom:

1. Wait for ``episodes_per_update`` complete episodes the learner has not consumed yet
   (``source != "demo"``); which ones were consumed is part of the checkpoint, so a restart
   never reuses an episode.
2. Rewards (``shape_rewards``): ``critic`` asks the RewardSource (in-process critic or
   ``vlac critic serve``) for the progress since the first frame phi_t = delta(o_0, o_t+1)
   and rewards its differences (``progress_rewards``: an episode's return is its final
   progress), or with ``pairs=consecutive`` for r_t = delta(o_t, o_t+k); a success the robot
   reported adds ``success_reward`` at its last step, where the episode ends (no bootstrap);
   so does the first step whose done probability exceeds ``done_threshold`` (off by
   default); otherwise the value of the last observation bootstraps it. ``sparse`` gives
   ``success_reward`` at the last step of a successful episode and 0 elsewhere.
3. Image features once per frame (the encoders are frozen), then one pass of the learner's own
   weights over every step: the PPO anchor log-probs and the values (``vlac.cloud.learner.ppo``
   explains why the robot's INT8 log-probs are never the anchor), then GAE per episode (the
   value targets). The advantages are ``group_advantages`` by default: every step of an
   episode gets its return minus the mean return of the batch's episodes of the same task,
   which needs no trained value function (the value head starts untrained, and GAE on it
   gave no improvement in #7); ``advantage=gae`` uses GAE's.
4. PPO epochs over shuffled minibatches: ``ppo_loss`` with truncated importance weights from
   the behaviour log-probs (the episode's ``logprob`` column) and the version lag (learner
   version - the step's ``policy_version``), plus ``bc_coef`` x behaviour cloning on operator
   takeover steps and replayed demonstrations, plus ``kl_ref_coef`` x KL to the frozen
   ``--init`` policy. Takeover steps are never PPO samples. The epochs stop early once an
   epoch's approx KL to the anchor passes ``target_kl``.
5. version += 1; every ``publish_every`` updates ``on_publish(actor, version)``; every
   ``checkpoint_every`` updates the DeepSpeed checkpoint (weights, optimizer, version, consumed
   episodes, log) and the actor go to the object store under ``learner/checkpoints/``, where
   the next start resumes from. A stop (``--once``, ``max_updates``, the idle timeout, SIGTERM)
   finishes the update in hand and checkpoints; after a crash the learner rolls back to the
   last checkpoint and re-reads the episodes consumed after it.

Metrics go to TensorBoard (``out/tb``) and ``out/learner_curves.png``. The store is opened
read-only, so the learner runs beside a live ingest without touching its staging area.

Several processes (``torchrun --nproc_per_node 2 -m vlac.infra.cli learner run ...``): rank 0
chooses the episodes and broadcasts them (as JSON), every rank prepares the same batch and
trains on its share of each minibatch (DeepSpeed averages the gradients), rank 0 alone writes
metrics, uploads checkpoints and publishes. The ranks share ``out`` (one host, or a shared
file system). The PPO runs with dropout off, so the first minibatch's ratio new/anchor is 1.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from vlac.cloud.actor.model import TorchActor
from vlac.cloud.critic.model import write_json
from vlac.cloud.critic.service import RewardSource
from vlac.cloud.fleet.publisher import PublisherConfig
from vlac.cloud.learner.ppo import gae, ppo_loss
from vlac.cloud.models import engine as eng
from vlac.cloud.models.encoders import FeatureCache, ImageEncoder, TextEncoder
from vlac.cloud.models.vlac import SmallVLAC, bc_loss
from vlac.cloud.store.episodes import Episode, EpisodeStore
from vlac.shared.config import ConfigError, check, describe, opt
from vlac.shared.objstore import open_store

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "learner/checkpoints"
PPO_STATS = ("pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "mean_weight", "kl_ref")


@dataclass
class LearnerConfig:
    store_root: Path = opt(Path(".cache/store"), "Episode store the fleet's episodes arrive in.")
    init: Path = opt(Path(".cache/actor/actor.pt"), "Actor checkpoint to start from "
                     "(`vlac actor pretrain`); its version is the learner's first version.")
    out: Path = opt(Path(".cache/learner"), "Output folder: local checkpoints, TensorBoard "
                    "events (tb/), learner_curves.png, learner_log.json, actor.pt.")
    object_store: str = opt("", "Where checkpoints are uploaded and resumed from (a folder or "
                            "s3://bucket/prefix?endpoint=URL; empty: OUT/objects).")
    features: Path = opt(Path(".cache/critic/features"), "Image feature cache of the "
                         "demonstrations (shared with `vlac actor pretrain`).")
    reward: Literal["critic", "sparse"] = opt("critic", "critic: the critic's progress deltas; "
                                              "sparse: 1 at the end of a successful episode.")
    critic: Path | None = opt(None, "Critic checkpoint to score episodes in this process.")
    reward_service: str = opt("", "Address of `vlac critic serve` (instead of --critic).")
    reward_timeout_s: float = opt(120.0, "Timeout of one reward request to the service.")
    reward_stride: int = opt(1, "k of r_t = delta(o_t, o_t+k).")
    done_threshold: float = opt(1.0, "The episode ends at the first step whose critic done "
                                "probability exceeds this (1 disables it: the small critic "
                                "calls many failed rollouts done, see docs/training.md).")
    pairs: Literal["from_first", "consecutive"] = opt(
        "from_first", "Critic rewards from the progress since the episode's first frame "
        "(potential differences; a return is the final progress) or from consecutive-pair "
        "deltas delta(o_t, o_t+k).")
    success_reward: float = opt(1.0, "Reward added at the end of an episode the robot reported "
                                "as a success (the whole reward with --reward sparse).")
    advantage: Literal["group", "horizon", "gae"] = opt(
        "group", "group: every step of an episode gets the episode's return minus the mean "
        "return of its task's episodes in the batch (no value function needed); horizon: "
        "each step gets the reward of its next --horizon steps minus that task's mean over "
        "the batch; gae: GAE with the value head.")
    horizon: int = opt(10, "Steps summed per advantage with --advantage horizon.")
    negative_scale: float = opt(1.0, "Factor on negative advantages (group and horizon): "
                                "pushing a sampled token down spreads its mass over all "
                                "others and raises the entropy; below 1 the update leans "
                                "on imitating what went better (0: only that).")
    episodes_per_update: int = opt(8, "Episodes gathered for one PPO update.")
    epochs: int = opt(4, "PPO epochs over each batch.")
    minibatch_size: int = opt(64, "Steps per minibatch (over all processes).")
    lr: float = opt(3e-5, "Learning rate (AdamW, constant). The joint log-prob of 4 tokens "
                    "moves fast: 1e-4 made the small actor's success fall in #7's runs.")
    gamma: float = opt(0.99, "Discount.")
    gae_lambda: float = opt(0.95, "GAE lambda.")
    clip: float = opt(0.2, "PPO ratio clip.")
    target_kl: float = opt(0.05, "Stop the update's epochs early once an epoch's mean approx "
                           "KL to the anchor exceeds this (0: off).")
    vf_coef: float = opt(0.5, "Weight of the value loss (--advantage gae only: the value "
                         "head shares the trunk, and training it where no advantage uses it "
                         "moved the policy with no policy gradient at all in #7).")
    ent_coef: float = opt(0.0, "Weight of the entropy bonus.")
    kl_ref_coef: float = opt(0.0, "Weight of KL(policy || the --init policy) on the PPO "
                             "samples: keeps noisy updates near the imitation policy "
                             "(0: off, no reference copy is kept).")
    temperature: float = opt(1.0, "Sampling temperature of the robots (their behaviour "
                             "log-probs are under softmax(logits / T)); the policy PPO "
                             "improves is that tempered one, so give the robots' value.")
    rho_max: float = opt(1.0, "Truncation of the importance weight anchor/behaviour.")
    max_version_lag: int = opt(4, "Steps of policies older than this many versions get "
                               "weight 0.")
    max_grad_norm: float = opt(1.0, "Gradient clipping (DeepSpeed).")
    bc_coef: float = opt(0.1, "Weight of behaviour cloning on takeovers and demonstrations "
                         "(0: off).")
    success_replay: int = opt(0, "The fleet's last N successful episodes join the "
                              "behaviour-cloning term (self-imitation: the policy's own "
                              "successes on layouts no demonstration covered; needs "
                              "--bc-coef > 0; 0: off).")
    takeover_replay: int = opt(0, "Operator takeovers of the fleet's last N episodes "
                               "that had one stay in the behaviour-cloning pool (HG-DAgger's "
                               "aggregated data: expert actions in states the policy itself "
                               "reached); 0: only the current update's takeovers.")
    bc_batch_size: int = opt(32, "Behaviour-cloning steps per minibatch.")
    bc_steps: int = opt(0, "Extra behaviour-cloning-only optimizer steps after each update's "
                        "PPO epochs, at bc_lr (0: BC only rides along PPO's minibatches, at "
                        "lr x bc_coef).")
    bc_lr: float = opt(3e-4, "Learning rate of the extra behaviour-cloning steps.")
    demo_episodes: int = opt(20, "Stored demonstrations replayed in the BC term (offline "
                             "demonstration replay; 0: only operator takeovers).")
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage (0, 1 or 2).")
    ds_config: Path | None = opt(None, "DeepSpeed JSON config (default: infra/deepspeed/).")
    checkpoint_every: int = opt(10, "Updates between checkpoints (and one at exit).")
    keep_checkpoints: int = opt(3, "Checkpoints kept in the object store.")
    publish_every: int = opt(1, "Updates between calls of the publish hook.")
    max_updates: int = opt(0, "Stop after this many updates in this run (0: no limit).")
    once: bool = opt(False, "Consume what the store holds now (the rest in one smaller "
                     "update) and exit.")
    idle_timeout_s: float = opt(0.0, "Exit when no new episode arrived for this long "
                                "(0: wait forever).")
    poll_s: float = opt(2.0, "Seconds between looks at the store while waiting.")
    camera: str = opt("", "Camera the actor sees (empty: the --init actor's camera).")
    seed: int = opt(0, "Seed of minibatch shuffling and BC sampling.")
    threads: int = opt(0, "torch threads (0: torch's default).")
    publish: bool = opt(False, "Export, quantize, sign and upload every --publish-every "
                        "versions to the fleet (and the init weights first, if the fleet has "
                        "no version yet).")
    publish_tasks: list[str] = opt(["reach-v3", "button-press-v3", "drawer-open-v3",
                                    "push-v3"], "Tasks whose sentences published versions "
                                   "carry (and whose demos calibrate INT8).")
    publisher: PublisherConfig = field(default_factory=PublisherConfig,
                                       metadata={"help": "Where and how versions go out."})

    def __post_init__(self) -> None:
        self.store_root, self.init, self.out = (Path(self.store_root), Path(self.init),
                                                Path(self.out))
        self.features = Path(self.features)
        if self.critic is not None:
            self.critic = Path(self.critic)
            check(self.critic.exists(), "critic", f"{self.critic} does not exist; train one "
                  "with `vlac critic train`")
        if self.ds_config is not None:
            self.ds_config = Path(self.ds_config)
            check(self.ds_config.exists(), "ds_config", f"{self.ds_config} does not exist")
        check(self.reward in ("critic", "sparse"), "reward", "use critic or sparse")
        check(not (self.critic and self.reward_service), "reward_service",
              "give either --critic or --reward-service, not both")
        check(self.reward_stride >= 1, "reward_stride", "must be >= 1")
        check(self.pairs in ("from_first", "consecutive"), "pairs",
              "use from_first or consecutive")
        check(self.advantage in ("group", "horizon", "gae"), "advantage",
              "use group, horizon or gae")
        check(self.horizon >= 1, "horizon", "must be >= 1")
        check(0 <= self.negative_scale <= 1, "negative_scale", "must lie in [0, 1]")
        check(math.isfinite(self.success_reward), "success_reward", "must be a number")
        check(0 < self.done_threshold <= 1, "done_threshold", "must lie in (0, 1]")
        check(self.episodes_per_update >= 1, "episodes_per_update", "must be >= 1")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.minibatch_size >= 1, "minibatch_size", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(0 <= self.gamma <= 1, "gamma", "must lie in [0, 1]")
        check(0 <= self.gae_lambda <= 1, "gae_lambda", "must lie in [0, 1]")
        check(self.clip > 0, "clip", "must be > 0 (0.1-0.3 is usual)")
        check(self.target_kl >= 0, "target_kl", "must be >= 0 (0: off)")
        check(self.rho_max > 0, "rho_max", "must be > 0")
        check(self.max_version_lag >= 0, "max_version_lag", "must be >= 0")
        check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        check(self.kl_ref_coef >= 0, "kl_ref_coef", "must be >= 0 (0: off)")
        check(self.temperature > 0, "temperature", "must be > 0 (the robots' sampling "
              "temperature)")
        check(self.bc_coef >= 0, "bc_coef", "must be >= 0 (0 turns behaviour cloning off)")
        check(self.bc_batch_size >= 1, "bc_batch_size", "must be >= 1")
        check(self.success_replay >= 0, "success_replay", "must be >= 0 (0: off)")
        check(self.takeover_replay >= 0, "takeover_replay", "must be >= 0 (0: off)")
        check(self.bc_steps >= 0, "bc_steps", "must be >= 0 (0: off)")
        check(not (self.bc_steps and self.bc_coef == 0), "bc_steps",
              "needs --bc-coef > 0 (it only adds behaviour-cloning steps)")
        check(self.bc_lr > 0, "bc_lr", "must be > 0")
        check(not (self.success_replay and self.bc_coef == 0), "success_replay",
              "replayed successes are behaviour-cloned: set --bc-coef > 0 too")
        check(self.demo_episodes >= 0, "demo_episodes", "must be >= 0")
        check(self.zero_stage in (0, 1, 2), "zero_stage", "use 0, 1 or 2 (ZeRO-3 partitions "
              "the weights the learner saves and publishes whole)")
        check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        check(self.publish_every >= 1, "publish_every", "must be >= 1")
        check(self.max_updates >= 0, "max_updates", "must be >= 0 (0: no limit)")
        check(self.idle_timeout_s >= 0, "idle_timeout_s", "must be >= 0 (0: wait forever)")
        check(self.poll_s > 0, "poll_s", "must be > 0")


def reward_source(cfg: LearnerConfig) -> RewardSource | None:
    """The RewardSource the config names (None for sparse rewards)."""
    if cfg.reward == "sparse":
        return None
    if cfg.reward_service:
        from vlac.cloud.critic.service import RewardClient

        return RewardClient(cfg.reward_service, cfg.reward_timeout_s)
    if cfg.critic is not None:
        from vlac.cloud.critic.model import SmallVLACCritic
        from vlac.cloud.critic.service import InProcessRewards

        return InProcessRewards(SmallVLACCritic.load(cfg.critic))
    raise ConfigError("config field `critic`: reward=critic needs --critic CRITIC.pt or "
                      "--reward-service ADDRESS (or use --reward sparse)")


# ---------------------------------------------------------------------- rewards and data
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
    deltas grow with every small step a critic scores slightly positive (measured in #7:
    failed 150-step reach episodes summed to 2.5, successful ones to 0.7)."""
    phi = np.asarray(phi, np.float32)
    return np.diff(np.concatenate([np.zeros(1, np.float32), phi]))


def window_sums(rewards: np.ndarray, horizon: int, n: int) -> np.ndarray:
    """(n,) sum of rewards[t:t+horizon] for each step t (0 past the rewards' end)."""
    c = np.concatenate([[0.0], np.cumsum(np.asarray(rewards, np.float64))])
    t = np.arange(n)
    hi = np.minimum(t + horizon, len(rewards))
    lo = np.minimum(t, len(rewards))
    return (c[hi] - c[lo]).astype(np.float32)


def group_advantages(scores: np.ndarray, groups: list[str]) -> np.ndarray:
    """Episode-level advantages: each episode's return minus the mean return of the
    episodes of its task in the batch (the whole batch's mean when a task has only one),
    scaled by the standard deviation of the result over the batch."""
    scores = np.asarray(scores, np.float64)
    names = np.asarray(groups)
    base = np.full(len(scores), scores.mean() if len(scores) else 0.0)
    for g in set(groups):
        m = names == g
        if m.sum() >= 2:
            base[m] = scores[m].mean()
    adv = scores - base
    std = adv.std()
    return (adv / std if std > 1e-8 else adv).astype(np.float32)


@dataclass
class EpisodeData:
    """One consumed episode, featurised, with its rewards."""

    key: str
    success: bool
    text: np.ndarray  # (384,) the task sentence
    feat: np.ndarray  # (T, 16, 1280) float16
    proprio: np.ndarray
    tokens: np.ndarray  # (T, A) int64
    logprob: np.ndarray  # behaviour log-probs (T,)
    policy_version: np.ndarray
    intervention: np.ndarray
    rewards: np.ndarray  # (n_used,)
    terminal: bool
    task: str = ""  # the group of ``group_advantages``

    def __len__(self) -> int:
        return len(self.proprio)


class StepPool:
    """Behaviour-cloning steps (takeovers, demonstrations) kept as parts; samples rows."""

    def __init__(self, parts: list[dict[str, np.ndarray]]) -> None:
        self.parts = [p for p in parts if len(p["tokens"])]
        self.ends = np.cumsum([len(p["tokens"]) for p in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def sample(self, rng: np.random.Generator, k: int) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, len(self), k)
        part = np.searchsorted(self.ends, idx, side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        rows = {name: [] for name in ("text", "feat", "proprio", "tokens")}
        for i in np.unique(part):
            sel = idx[part == i] - starts[i]
            for name in rows:
                rows[name].append(self.parts[i][name][sel])
        return {name: torch.from_numpy(np.concatenate(v).astype(
            np.int64 if name == "tokens" else np.float32)) for name, v in rows.items()}


def steps_of(text: np.ndarray, feat: np.ndarray, proprio: np.ndarray,
             tokens: np.ndarray) -> dict[str, np.ndarray]:
    return {"text": np.repeat(text[None], len(tokens), 0), "feat": feat,
            "proprio": proprio.astype(np.float32), "tokens": tokens.astype(np.int64)}


# ---------------------------------------------------------------------- the PPO update
@torch.no_grad()
def anchor_pass(model, episodes: list[EpisodeData], batch: int = 256,
                temperature: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The learner's own weights at the start of the update: (log-prob, value) per step."""
    out = []
    for ep in episodes:
        logps, values = [], []
        for s in range(0, len(ep), batch):
            sl = slice(s, s + batch)
            n = len(ep.proprio[sl])
            logp, _, value = model.action_logprobs(
                torch.from_numpy(np.repeat(ep.text[None], n, 0)),
                torch.from_numpy(ep.feat[sl].astype(np.float32)),
                torch.from_numpy(ep.proprio[sl].astype(np.float32)),
                torch.from_numpy(ep.tokens[sl]), temperature)
            logps.append(logp.numpy())
            values.append(value.numpy())
        out.append((np.concatenate(logps), np.concatenate(values)))
    return out


def _before_takeover(ep: EpisodeData) -> int:
    """Steps of an episode before the operator's first takeover. With group advantages only
    these are PPO samples, judged by the return they earned themselves: an episode an
    operator rescued must not credit the policy's steps with the operator's success (which
    would reward stalling, since a stall is what calls the operator)."""
    taken = np.flatnonzero(ep.intervention[:len(ep.rewards)])
    return int(taken[0]) if len(taken) else len(ep.rewards)


def build_batch(episodes: list[EpisodeData], anchors: list[tuple[np.ndarray, np.ndarray]],
                version: int, cfg: LearnerConfig, refs: list[np.ndarray] | None = None
                ) -> dict[str, np.ndarray]:
    """GAE per episode (the value targets, and the advantages with ``advantage=gae``), or
    ``group_advantages`` over the episodes' returns; then the PPO samples: used,
    policy-chosen, not-too-stale steps. ``refs``: the reference policy's log-probs per
    episode (the ``b_ref_logp`` column, for ``kl_ref_coef``)."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "text", "feat", "proprio", "tokens", "b_behaviour_logp", "b_anchor_logp",
        "b_values", "b_advantages", "b_returns", "b_version_lag", "b_task")}
    used = [i for i, ep in enumerate(episodes) if len(ep.rewards)]
    samples: list[int] = []  # PPO samples per episode (group advantages)
    own = {i: _before_takeover(episodes[i]) for i in used}
    group = dict(zip(used, group_advantages([episodes[i].rewards[:own[i]].sum() for i in used],
                                            [episodes[i].task for i in used]), strict=True))
    for i, (ep, (logp, values)) in enumerate(zip(episodes, anchors, strict=True)):
        n = len(ep.rewards)
        if n == 0:
            continue
        dones = np.zeros(n, np.float32)
        dones[-1] = float(ep.terminal)
        last_value = 0.0 if ep.terminal else float(values[n])
        adv, ret = gae(ep.rewards, values[:n], dones, last_value, cfg.gamma, cfg.gae_lambda)
        lag = version - ep.policy_version[:n]
        keep = ~ep.intervention[:n] & (lag <= cfg.max_version_lag)
        if cfg.advantage in ("group", "horizon"):
            adv = np.full(n, group[i], np.float32) if cfg.advantage == "group" else \
                window_sums(ep.rewards[:own[i]], cfg.horizon, n)
            keep[own[i]:] = False
            if cfg.advantage == "group" and keep.any():
                adv = adv / keep.sum()  # each episode weighs the same, see below
                samples.append(int(keep.sum()))
        cols["text"].append(np.repeat(ep.text[None], int(keep.sum()), 0))
        for name, arr in (("feat", ep.feat), ("proprio", ep.proprio), ("tokens", ep.tokens),
                          ("b_behaviour_logp", ep.logprob), ("b_anchor_logp", logp),
                          ("b_values", values)):
            cols[name].append(arr[:n][keep])
        cols["b_advantages"].append(adv[keep])
        cols["b_task"].append(np.full(int(keep.sum()), ep.task, dtype=object))
        cols["b_returns"].append(ret[keep])
        cols["b_version_lag"].append(lag[keep])
        if refs is not None:
            cols.setdefault("b_ref_logp", []).append(refs[i][:n][keep])
    if not cols["text"]:
        return {}
    out = {k: np.concatenate(v) for k, v in cols.items()}
    if samples:  # per-step advantage A_episode * mean_samples / samples_of_the_episode:
        # failures run to the step limit and successes stop early, so with A per step the
        # failures' many steps outweigh the successes' few and PPO mostly pushes sampled
        # tokens down, flattening the policy (its entropy rose in #7's runs)
        out["b_advantages"] = (out["b_advantages"] * np.mean(samples)).astype(np.float32)
    task = out.pop("b_task")
    if cfg.advantage == "horizon" and len(task):
        out["b_advantages"] = group_advantages(out["b_advantages"], list(task))
    if cfg.advantage != "gae" and cfg.negative_scale != 1:
        adv = out["b_advantages"]
        out["b_advantages"] = np.where(adv < 0, adv * cfg.negative_scale, adv).astype(np.float32)
    return out


def _to_torch(b: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in b.items():
        x = v[idx]
        out[k] = torch.from_numpy(x.astype(np.int64) if k in ("tokens", "b_version_lag")
                                  else x.astype(np.float32))
    return out


def train_minibatch(engine, mb: dict[str, torch.Tensor] | None,
                    bc_mb: dict[str, torch.Tensor] | None, cfg: LearnerConfig
                    ) -> dict[str, float]:
    """One optimizer step: clipped PPO on ``mb`` plus ``bc_coef`` x BC on ``bc_mb``."""
    model = engine.module
    loss, stats = None, {}
    if mb is not None:
        new_logp, entropy, new_value = model.action_logprobs(
            mb["text"], mb["feat"], mb["proprio"], mb["tokens"], cfg.temperature)
        loss, stats = ppo_loss(new_logp, mb["b_anchor_logp"], mb["b_behaviour_logp"],
                               mb["b_advantages"], mb["b_returns"], new_value, entropy,
                               mb["b_version_lag"], clip=cfg.clip,
                               vf_coef=cfg.vf_coef if cfg.advantage == "gae" else 0.0,
                               ent_coef=cfg.ent_coef, rho_max=cfg.rho_max,
                               max_version_lag=cfg.max_version_lag,
                               normalize_advantages=cfg.advantage == "gae",
                               mb_ref_logp=mb.get("b_ref_logp"), kl_ref_coef=cfg.kl_ref_coef)
    if bc_mb is not None and cfg.bc_coef > 0:
        b_loss, b_stats = bc_loss(model, bc_mb)
        loss = cfg.bc_coef * b_loss if loss is None else loss + cfg.bc_coef * b_loss
        stats["bc_loss"] = b_stats["loss"]
    if loss is None:
        raise ValueError("a minibatch needs PPO samples or behaviour-cloning steps")
    engine.backward(loss)
    engine.step()
    return stats


def ppo_update(engine, batch: dict[str, np.ndarray], bc: StepPool, cfg: LearnerConfig,
               seed: int, rank: int = 0, world: int = 1) -> dict[str, float]:
    """``epochs`` passes over shuffled minibatches; each process trains on its share of
    every minibatch (the same shuffle everywhere). An epoch whose mean approx KL exceeds
    ``target_kl`` is the last (CleanRL's early stop). Returns the mean of each metric."""
    n = len(batch.get("tokens", ()))
    if n < world:  # too few to give every process a sample: no PPO term this time
        n = 0
    if n and cfg.advantage != "gae" and not np.any(batch["b_advantages"]):
        n = 0  # every episode tied with its group: no signal, and no step may move the policy
    n_mb = max(1, min(math.ceil(n / cfg.minibatch_size), n // world)) if n else 1
    use_bc = cfg.bc_coef > 0 and len(bc) > 0
    if n == 0 and not use_bc:
        return {}
    shuffle = np.random.default_rng([seed, 0])
    bc_rng = np.random.default_rng([seed, 1, rank])
    bc_k = max(1, cfg.bc_batch_size // world)
    sums: dict[str, list[float]] = {}
    epochs = 0
    for _ in range(cfg.epochs):
        epochs += 1
        perm = shuffle.permutation(n)
        kls = []
        for chunk in np.array_split(perm, n_mb):
            mb = _to_torch(batch, chunk[rank::world]) if n else None
            stats = train_minibatch(engine, mb, bc.sample(bc_rng, bc_k) if use_bc else None,
                                    cfg)
            kls.append(stats.get("approx_kl", 0.0))
            for k, v in stats.items():
                sums.setdefault(k, []).append(v)
        if n and cfg.target_kl and _mean_over_ranks(float(np.mean(kls))) > cfg.target_kl:
            break
    if use_bc and cfg.bc_steps:  # behaviour cloning alone, at its own learning rate
        eng.set_lr(engine, cfg.bc_lr)
        try:
            for _ in range(cfg.bc_steps):
                stats = train_minibatch(engine, None, bc.sample(bc_rng, bc_k), cfg)
                sums.setdefault("bc_only_loss", []).append(stats["bc_loss"])
        finally:
            eng.set_lr(engine, cfg.lr)
    return {**{k: float(np.mean(v)) for k, v in sums.items()}, "epochs": epochs}


# ---------------------------------------------------------------------- the loop
def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def broadcast_json(obj: Any, rank: int) -> Any:
    """Rank 0's JSON-serialisable ``obj`` on every rank (bytes, never pickle)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    data = json.dumps(obj).encode() if rank == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8)
    if rank == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.numpy()))


def _mean_over_ranks(x: float) -> float:
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def episode_key(info: dict) -> str:
    return f"{info['robot_id']}/{info['episode_id']}"


class Learner:
    """PPO on the store's episodes. ``run()`` loops until a stop condition; ``update()`` is
    one PPO update on given episodes. ``on_publish(actor, version)`` gets a copy of the
    weights every ``publish_every`` updates (rank 0 only)."""

    def __init__(self, cfg: LearnerConfig, rewards: RewardSource | None = None,
                 on_publish: Callable[[TorchActor, int], None] | None = None, *,
                 image_encoder: ImageEncoder | None = None,
                 text_encoder: TextEncoder | None = None) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.rewards = rewards if rewards is not None or cfg.reward == "sparse" \
            else reward_source(cfg)
        self.on_publish = on_publish
        self.store = EpisodeStore(cfg.store_root, read_only=True)  # ingest writes beside us
        self.actor = TorchActor.load(cfg.init, image_encoder=image_encoder,
                                     text_encoder=text_encoder)
        self.camera = cfg.camera or self.actor.camera
        self.actor.camera = self.camera
        self.init_version = self.actor.version
        self.reference = None  # the --init policy, frozen (before a resume moves the weights)
        if cfg.kl_ref_coef > 0:
            self.reference = copy.deepcopy(self.actor.model).eval().requires_grad_(False)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.engine = eng.make_engine(self.actor.model, lr=cfg.lr, zero_stage=cfg.zero_stage,
                                      micro_batch=max(1, cfg.minibatch_size // world),
                                      grad_clip=cfg.max_grad_norm, ds_config=cfg.ds_config)
        self.engine.eval()  # no dropout: PPO ratios and anchors come from the same function
        dist = _dist()
        self.rank = dist.get_rank() if dist else 0
        self.world = dist.get_world_size() if dist else 1
        self.objects = open_store(cfg.object_store or cfg.out / "objects")
        self.ckpt_dir = cfg.out / "checkpoints"
        self.version = self.init_version
        self.consumed: set[str] = set()
        self.log: list[dict[str, Any]] = []
        self._dirty = False  # consumed episodes or weights not yet checkpointed
        self._stop = threading.Event()
        self._demos: dict[str, dict[str, np.ndarray]] = {}
        self._wins: deque[dict[str, np.ndarray]] = deque(maxlen=cfg.success_replay or None)
        self._takeovers: deque[dict[str, np.ndarray]] = deque(
            maxlen=cfg.takeover_replay or None)
        self._features: FeatureCache | None = None
        self._writer = None
        self._resume()

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        if self.rank == 0:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            if self.objects.exists(f"{CHECKPOINT_PREFIX}/latest"):
                tag = self.objects.get_bytes(f"{CHECKPOINT_PREFIX}/latest").decode().strip()
                for key in self.objects.list(f"{CHECKPOINT_PREFIX}/{tag}/"):
                    self.objects.get_file(key, self.ckpt_dir / key[len(CHECKPOINT_PREFIX) + 1:])
                (self.ckpt_dir / "latest").write_text(tag)
        _barrier()
        client = eng.load(self.engine, self.ckpt_dir)
        if client:
            self.version = int(client["version"])
            self.consumed = set(client["consumed"])
            self.log = list(client.get("log", []))
            if self.rank == 0:
                log.info("resumed at version %d (%d episodes consumed) from %s",
                         self.version, len(self.consumed), self.objects)

    def save_checkpoint(self) -> None:
        """DeepSpeed checkpoint + actor, uploaded under learner/checkpoints/ (all ranks call
        this; rank 0 uploads). ``latest`` is written last, so it never names a partial one."""
        eng.save(self.engine, self.ckpt_dir, self.version,
                 {"version": self.version, "consumed": sorted(self.consumed), "log": self.log,
                  "init_version": self.init_version})
        tag = f"step{self.version}"
        _barrier()
        self._dirty = False
        if self.rank != 0:
            return
        self.actor.version = self.version
        self.actor.save(self.ckpt_dir / tag / "actor.pt")
        self.actor.save(self.cfg.out / "actor.pt")
        for f in sorted((self.ckpt_dir / tag).rglob("*")):
            if f.is_file():
                self.objects.put_file(f"{CHECKPOINT_PREFIX}/{tag}/"
                                      f"{f.relative_to(self.ckpt_dir / tag).as_posix()}", f)
        self.objects.put_bytes(f"{CHECKPOINT_PREFIX}/latest", tag.encode())
        self._prune(tag)

    def _prune(self, current: str) -> None:
        tags = sorted({k.split("/")[2] for k in self.objects.list(f"{CHECKPOINT_PREFIX}/")
                       if k.count("/") >= 3 and k.split("/")[2].startswith("step")},
                      key=lambda t: int(t[4:]))
        for tag in [t for t in tags[:-self.cfg.keep_checkpoints] if t != current]:
            for key in self.objects.list(f"{CHECKPOINT_PREFIX}/{tag}/"):
                self.objects.delete(key)
            shutil.rmtree(self.ckpt_dir / tag, ignore_errors=True)

    # ------------------------------------------------------------------ episodes
    def poll(self) -> list[dict]:
        """Complete, unconsumed fleet episodes (not demonstrations), oldest first."""
        new = [e for e in self.store.list_episodes()
               if e.get("source") != "demo" and episode_key(e) not in self.consumed]
        return sorted(new, key=lambda e: (e["completed_at"], episode_key(e)))

    def demo_episodes(self) -> list[dict]:
        """Up to ``demo_episodes`` successful demonstrations, taken round-robin over tasks."""
        if self.cfg.bc_coef == 0 or self.cfg.demo_episodes == 0:
            return []
        by_task: dict[str, list[dict]] = {}
        for e in self.store.list_episodes():
            if e.get("source") == "demo" and e["outcome"]["success"]:
                by_task.setdefault(e.get("task_id") or e["task"], []).append(e)
        queues = [sorted(v, key=lambda e: -e["completed_at"]) for _, v in sorted(by_task.items())]
        out: list[dict] = []
        while len(out) < self.cfg.demo_episodes and any(queues):
            for q in queues:
                if q and len(out) < self.cfg.demo_episodes:
                    out.append(q.pop(0))
        return out

    def _frames(self, info: dict) -> tuple[Episode, np.ndarray]:
        ep = self.store.load_episode(info["robot_id"], info["episode_id"])
        if self.camera not in ep.steps.images:
            raise ValueError(f"episode {episode_key(info)} has no camera {self.camera!r} "
                             f"(it has {sorted(ep.steps.images)}); set --camera")
        return ep, ep.steps.images[self.camera]

    def score(self, task: str, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The critic's (delta, done probability) per step pair (zeros for sparse rewards)."""
        if self.cfg.reward == "critic" and len(frames) >= 2:
            first = self.cfg.pairs == "from_first"
            delta, done = self.rewards.episode_rewards(task, frames, self.cfg.reward_stride,
                                                       from_first=first)
            delta = progress_rewards(delta) if first else np.asarray(delta, np.float32)
            return delta, np.asarray(done, np.float32)
        return (np.zeros(max(0, len(frames) - 1), np.float32),
                np.zeros(max(0, len(frames) - 1), np.float32))

    def load_episode(self, info: dict) -> EpisodeData:
        """Frames -> features (once per frame) and rewards."""
        ep, frames = self._frames(info)
        return self._episode_data(info, ep, frames, self.score(ep.task, frames))

    def _episode_data(self, info: dict, ep: Episode, frames: np.ndarray,
                      scores: tuple[np.ndarray, np.ndarray]) -> EpisodeData:
        s, n, success = ep.steps, len(ep), bool(info["outcome"]["success"])
        rewards, terminal = shape_rewards(self.cfg.reward, n, success, *scores,
                                          self.cfg.done_threshold, self.cfg.success_reward)
        return EpisodeData(
            key=episode_key(info), success=success, task=info.get("task_id") or ep.task,
            text=self.actor.text_encoder.encode([ep.task])[0],
            feat=self.actor.image_encoder.encode(frames), proprio=s.proprio,
            tokens=s.action_tokens.astype(np.int64), logprob=s.logprob,
            policy_version=s.policy_version, intervention=s.intervention.astype(bool),
            rewards=rewards, terminal=terminal)

    def _demo_features(self, info: dict) -> np.ndarray:
        if self._features is None:
            self._features = FeatureCache(self.cfg.features, self.actor.image_encoder)
        return self._features.get(info["robot_id"], info["episode_id"], self.camera,
                                  lambda: self._frames(info)[1])

    def _demo_steps(self, infos: list[dict]) -> list[dict[str, np.ndarray]]:
        """BC steps of the replayed demonstrations (features from the shared cache, which
        rank 0 fills first so that no two processes write one cache file)."""
        todo = [i for i in infos if episode_key(i) not in self._demos]
        if todo and self.world > 1:
            if self.rank == 0:
                for info in todo:
                    self._demo_features(info)
            _barrier()
        for info in todo:
            cols = self.store.load_columns(info["robot_id"], info["episode_id"],
                                           ["proprio", "action_tokens"])
            self._demos[episode_key(info)] = steps_of(
                self.actor.text_encoder.encode([info["task"]])[0], self._demo_features(info),
                cols["proprio"], cols["action_tokens"])
        self._demos = {episode_key(i): self._demos[episode_key(i)] for i in infos}
        return list(self._demos.values())

    # ------------------------------------------------------------------ one update
    def update(self, infos: list[dict], demos: list[dict] | None = None) -> dict[str, Any]:
        """One PPO update on these episodes (and BC on takeovers + ``demos``). The version
        goes up by one unless there was nothing to learn from (no PPO sample, no BC step)."""
        if not infos:
            raise ValueError("an update needs at least one episode")
        t0 = time.monotonic()
        loaded = [self._frames(i) for i in infos]
        scores = [self.score(ep.task, frames) for ep, frames in loaded] if self.rank == 0 \
            else None
        if self.world > 1:  # one critic call per episode, not one per process
            as_lists = [[d.tolist(), p.tolist()] for d, p in scores] if scores else None
            scores = [(np.asarray(d, np.float32), np.asarray(p, np.float32))
                      for d, p in broadcast_json(as_lists, self.rank)]
        episodes = [self._episode_data(i, ep, frames, sc)
                    for i, (ep, frames), sc in zip(infos, loaded, scores, strict=True)]
        del loaded
        anchors = anchor_pass(self.engine.module, episodes, temperature=self.cfg.temperature)
        refs = [logp for logp, _ in anchor_pass(self.reference, episodes,
                                                temperature=self.cfg.temperature)] \
            if self.reference is not None else None
        batch = build_batch(episodes, anchors, self.version, self.cfg, refs)
        if self.cfg.success_replay:  # the policy's own steps of its successful episodes
            self._wins.extend(steps_of(ep.text, ep.feat[~ep.intervention],
                                       ep.proprio[~ep.intervention], ep.tokens[~ep.intervention])
                              for ep in episodes if ep.success and not ep.intervention.all())
        taken = [steps_of(ep.text, ep.feat[ep.intervention], ep.proprio[ep.intervention],
                          ep.tokens[ep.intervention]) for ep in episodes if ep.intervention.any()]
        if self.cfg.takeover_replay:  # aggregate: this update's and earlier ones' takeovers
            self._takeovers.extend(taken)
            taken = list(self._takeovers)
        bc = StepPool(taken + self._demo_steps(demos or []) + list(self._wins))
        train = ppo_update(self.engine, batch, bc, self.cfg, seed=self.cfg.seed + self.version,
                           rank=self.rank, world=self.world)
        self.consumed.update(ep.key for ep in episodes)
        self._dirty = True
        n_steps = sum(len(ep) for ep in episodes)
        used = sum(len(ep.rewards) for ep in episodes)
        lags = np.concatenate([self.version - ep.policy_version[:len(ep.rewards)]
                               [~ep.intervention[:len(ep.rewards)]] for ep in episodes])
        stats: dict[str, Any] = {
            "episodes": len(episodes), "steps": n_steps,
            "ppo_samples": len(batch.get("tokens", ())), "bc_samples": len(bc),
            "return_mean": float(np.mean([ep.rewards.sum() for ep in episodes])),
            "success_rate": float(np.mean([ep.success for ep in episodes])),
            "episode_length": n_steps / len(episodes),
            "intervention_fraction": float(np.mean(np.concatenate(
                [ep.intervention for ep in episodes]))),
            "stale_fraction": float((lags > self.cfg.max_version_lag).mean()) if len(lags)
            else 0.0,
            "used_steps": used,
            **{k: float("nan") for k in (*PPO_STATS, "bc_loss", "bc_only_loss")},
            **{k: v for k, v in train.items() if k in (*PPO_STATS, "bc_loss", "bc_only_loss")},
            "epochs": train.get("epochs", 0),
        }
        if batch:
            ret, val = batch["b_returns"], batch["b_values"]
            var = float(np.var(ret))
            stats["explained_variance"] = float(1 - np.var(ret - val) / var) if var > 0 \
                else float("nan")
        stats["learned"] = bool(train)
        if train:  # a new policy version
            self.version += 1
        stats["version"] = self.version
        stats["seconds"] = time.monotonic() - t0
        self.log.append(stats)
        return stats

    # ------------------------------------------------------------------ run
    def stop(self) -> None:
        """Finish the update in hand, checkpoint and return from ``run``."""
        self._stop.set()

    def _next_plan(self, updates: int) -> dict | None:
        """Rank 0 decides what the next update uses (None: stop); every rank gets it."""
        plan = None
        if self.rank == 0 and not (self.cfg.max_updates and updates >= self.cfg.max_updates):
            infos = self._wait_for_episodes()
            if infos:
                plan = {"episodes": infos, "demos": self.demo_episodes()}
        return broadcast_json(plan, self.rank)

    def _wait_for_episodes(self) -> list[dict] | None:
        cfg, seen, last_arrival = self.cfg, -1, time.monotonic()
        while not self._stop.is_set():
            new = self.poll()
            if len(new) >= cfg.episodes_per_update:
                return new[:cfg.episodes_per_update]
            if cfg.once:
                return new or None
            if len(new) > seen:
                seen, last_arrival = len(new), time.monotonic()
            if cfg.idle_timeout_s and time.monotonic() - last_arrival > cfg.idle_timeout_s:
                log.info("no new episode for %.0f s: stopping", cfg.idle_timeout_s)
                return None
            self._stop.wait(cfg.poll_s)
        return None

    def run(self) -> dict[str, Any]:
        """Update until a stop condition; checkpoint at the end. Returns a summary."""
        cfg, t0, updates, consumed = self.cfg, time.monotonic(), 0, 0
        _ = self.actor.image_encoder, self.actor.text_encoder  # load before the progress bar
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(cfg.out / "tb"))
            print(f"learner at version {self.version}, {len(self.consumed)} episodes consumed "
                  f"so far; {self.world} process(es); waiting for {cfg.episodes_per_update} "
                  f"episodes per update in {cfg.store_root}", flush=True)
        bar = tqdm(total=cfg.max_updates or None, desc="learner", unit="update",
                   disable=self.rank != 0, mininterval=2)
        stats: dict[str, Any] = {}
        try:
            while (plan := self._next_plan(updates)) is not None:
                stats = self.update(plan["episodes"], plan["demos"])
                updates += 1
                consumed += stats["episodes"]
                bar.update(1)
                bar.set_postfix(version=self.version, ret=f"{stats['return_mean']:.3f}",
                                success=f"{stats['success_rate']:.2f}",
                                kl=f"{stats['approx_kl']:.4f}")
                self._after_update(stats)
        finally:
            bar.close()
        if self._dirty:
            self.save_checkpoint()
        summary = {"updates": updates, "version": self.version, "episodes": consumed,
                   "consumed_total": len(self.consumed), "seconds": time.monotonic() - t0,
                   "final": stats}
        if self.rank == 0:
            self._writer.close()
            plot_curves(self.log, cfg.out / "learner_curves.png")
            write_json(cfg.out / "learner_log.json", {**summary, "log": self.log})
            print(f"learner stopped at version {self.version} after {updates} updates "
                  f"({consumed} episodes)", flush=True)
        return summary

    def _after_update(self, stats: dict[str, Any]) -> None:
        v = self.version
        if self.rank == 0:
            for k, x in stats.items():
                if isinstance(x, (int, float)) and k not in ("version", "learned"):
                    self._writer.add_scalar(f"learner/{k}", x, v)
            self._writer.flush()
        if not stats["learned"]:
            return  # same weights as before: nothing to publish or checkpoint yet
        if self.rank == 0 and self.on_publish is not None and v % self.cfg.publish_every == 0:
            self.on_publish(self.snapshot(), v)
        if v % self.cfg.checkpoint_every == 0:
            self.save_checkpoint()
            if self.rank == 0:
                plot_curves(self.log, self.cfg.out / "learner_curves.png")

    def snapshot(self) -> TorchActor:
        """A copy of the current weights as an actor (safe to keep while training goes on)."""
        model = SmallVLAC(self.engine.module.cfg)
        model.load_state_dict(self.engine.module.state_dict())
        tok = self.actor.tokenizer
        return TorchActor(model, tok.low, tok.high, camera=self.camera, version=self.version,
                          image_encoder=self.actor.image_encoder,
                          text_encoder=self.actor.text_encoder)


def plot_curves(log_rows: list[dict], path: Path) -> None:
    """Returns, success rate, losses, approx KL, clip fraction and importance weight."""
    if not log_rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = [r["version"] for r in log_rows]
    panels = [("return (mean per episode)", ["return_mean"]),
              ("success rate of consumed episodes", ["success_rate"]),
              ("losses", ["pg_loss", "v_loss", "bc_loss"]), ("approx KL", ["approx_kl"]),
              ("clip fraction", ["clipfrac"]), ("importance weight (mean)", ["mean_weight"])]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (title, keys) in zip(axes.flat, panels, strict=True):
        for k in keys:
            ax.plot(v, [r.get(k, float("nan")) for r in log_rows], marker=".", label=k)
        ax.set_title(title)
        ax.set_xlabel("policy version")
        if len(keys) > 1:
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(cfg: LearnerConfig, on_publish: Callable[[TorchActor, int], None] | None = None
         ) -> dict[str, Any]:
    import signal

    rank0 = os.environ.get("RANK", "0") == "0"
    if rank0:
        print(describe(cfg), flush=True)
    publisher = None
    if cfg.publish and on_publish is None and rank0:
        from vlac.cloud.actor.export import ActorPublisher
        from vlac.cloud.fleet.publisher import Publisher

        publisher = Publisher(cfg.publisher)
        on_publish = ActorPublisher(publisher, cfg.store_root, cfg.publish_tasks).publish

    learner = Learner(cfg, on_publish=on_publish)
    if publisher is not None and publisher.fleet.latest_version() is None:
        on_publish(learner.snapshot(), learner.version)  # the fleet starts from the init
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: learner.stop())
    try:
        return learner.run()
    finally:
        close = getattr(learner.rewards, "close", None)
        if close is not None:
            close()

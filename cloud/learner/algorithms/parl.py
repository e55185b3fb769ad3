"""Policy improvement through a Q-function of its own, on action tokens: actions sampled
from the policy are scored by the Q-function and the policy moves toward the better ones by
supervised-style steps on their log-probabilities (the idea of Policy-Agnostic RL, Mark et
al. 2024, which distils the best-scored sample), with IQL value functions (``qfunction``)
trained on replayed transitions (``transitions``: demonstrations and takeovers half of each
batch, the fleet's own steps the other half, as RLPD and HIL-SERL mix them).

Why this and not a policy gradient on returns: the token actor's exploration is its own
sampling spread (about +-2 bins of 256), and an 8-episode PPO batch mostly sees layout luck.
Here every observation the fleet ever recorded stays useful: the Q-function is trained for
``critic_steps`` steps per update on all of it (several critic updates per policy update),
and the policy step needs no importance weights, so lagging INT8 robots, takeovers and
demonstrations all feed it. The improvement step works on token log-probabilities, so the
actor, its ONNX export and the edge runtime are unchanged.

One update (``Parl.update``):

1. the batch's episodes (and the replayed demonstrations, once) go into the replay;
2. ``critic_steps`` IQL steps (``critic_warmup_steps`` more on the first update, before the
   policy moves): V to the ``expectile`` of the target Q over the data's actions, Q to
   r + gamma V(s'), the target Q following by Polyak averaging;
3. up to ``policy_steps`` improvement steps on states drawn from the replay: ``candidates``
   token vectors sampled from the current policy at ``temperature`` plus the recorded action
   are scored by the smaller of the two Qs; ``improve weighted`` raises each candidate's
   log-probability by its score minus its state's mean, as a signal-to-noise ratio against
   the ensemble's disagreement (an uninformative or unsure Q moves little), ``rank`` clones
   the best (PA-RL), ``awr`` clones the
   recorded actions weighted by exp(beta (Q - V) / std) (IQL's extraction); each step adds
   ``kl_coef`` x KL to the policy as it was at the update's start, and the steps stop once
   that KL passes ``target_kl``; then ``bc.coef`` x behaviour cloning on the takeover and
   demonstration pool, and ``bc.steps`` BC-only steps as PPO does;
4. the version goes up when the policy moved.

Distilling the policy's own samples is not neutral: 25 cross-entropy steps at lr 1e-4 on
its own samples moved the 2-demo actor's greedy tokens by 13 bins on average and raised its
entropy from 1.35 to 1.71 nats (2.01 with soft targets), which is why ``weighted`` subtracts
a baseline and every step is held to its anchor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from vlac.cloud.learner.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    Context,
    UpdateBatch,
    register,
)
from vlac.cloud.learner.algorithms.qfunction import (
    ValueFunctions,
    expectile_loss,
    iql_q_loss,
    polyak,
    td_targets,
    tokens_to_unit,
    unpool_features,
)
from vlac.cloud.learner.algorithms.transitions import Replay
from vlac.cloud.learner.distributed import mean_over_ranks, rank_and_world
from vlac.cloud.models import engine as eng
from vlac.cloud.models.vlac import bc_loss
from vlac.shared.config import check, opt

if TYPE_CHECKING:
    from vlac.cloud.learner.replay import StepPool


@dataclass
class ParlConfig(AlgorithmConfig):
    name: str = opt("parl", "The RL algorithm, by name (registered: ppo, parl).")
    improve: Literal["weighted", "rank", "awr"] = opt(
        "weighted", "Policy improvement on --algorithm.candidates actions sampled from the "
        "policy plus the recorded one, scored by the Q-function: weighted (raise each one's "
        "log-probability by its score minus the state's mean score), rank (PA-RL: clone the "
        "best one), or awr (clone the recorded actions weighted by exp(beta (Q - V) / std)).")
    candidates: int = opt(4, "Actions sampled from the policy per state for ranking (the "
                          "recorded action is ranked with them).")
    temperature: float = opt(1.0, "Temperature the candidates are sampled at (the robots' "
                             "sampling temperature is the natural choice).")
    lr: float = opt(1e-5, "Learning rate of the policy's improvement steps (AdamW).")
    kl_coef: float = opt(0.1, "Weight of KL(the policy at the update's start || the policy) "
                         "in every improvement step.")
    target_kl: float = opt(0.02, "Stop an update's improvement steps once that KL (per "
                           "action token) exceeds this (0: off).")
    policy_steps: int = opt(25, "Policy-improvement steps per update.")
    policy_batch: int = opt(32, "States per policy-improvement step.")
    critic_lr: float = opt(3e-4, "Learning rate of the Q and V networks (AdamW).")
    critic_steps: int = opt(200, "Q/V steps per update.")
    critic_warmup_steps: int = opt(1000, "Extra Q/V steps on the first update, before the "
                                   "policy first moves.")
    critic_batch: int = opt(256, "Transitions per Q/V step.")
    gamma: float = opt(0.99, "Discount.")
    expectile: float = opt(0.7, "IQL's expectile of V over the data's actions (0.5: their "
                           "mean, i.e. SARSA; towards 1: the best of them).")
    target_tau: float = opt(0.005, "Polyak rate of the target Q.")
    awr_beta: float = opt(1.0, "Inverse temperature of the awr weights, on advantages "
                           "divided by their standard deviation over the batch.")
    awr_max_weight: float = opt(100.0, "Cap of the awr weights.")
    replay_capacity: int = opt(150_000, "Transitions kept per buffer (human, online).")
    max_grad_norm: float = opt(1.0, "Gradient clipping (DeepSpeed).")

    def __post_init__(self) -> None:
        check(self.improve in ("weighted", "rank", "awr"), "algorithm.improve",
              "use weighted, rank or awr")
        check(self.kl_coef >= 0, "algorithm.kl_coef", "must be >= 0")
        check(self.target_kl >= 0, "algorithm.target_kl", "must be >= 0 (0: off)")
        check(self.candidates >= 1, "algorithm.candidates", "must be >= 1")
        check(self.temperature > 0, "algorithm.temperature", "must be > 0")
        for f in ("lr", "critic_lr", "awr_beta", "awr_max_weight", "max_grad_norm"):
            check(getattr(self, f) > 0, f"algorithm.{f}", "must be > 0")
        for f in ("policy_steps", "critic_steps", "critic_warmup_steps"):
            check(getattr(self, f) >= 0, f"algorithm.{f}", "must be >= 0")
        for f in ("policy_batch", "critic_batch", "replay_capacity"):
            check(getattr(self, f) >= 1, f"algorithm.{f}", "must be >= 1")
        check(0 <= self.gamma <= 1, "algorithm.gamma", "must lie in [0, 1]")
        check(0 < self.expectile < 1, "algorithm.expectile", "must lie in (0, 1)")
        check(0 < self.target_tau <= 1, "algorithm.target_tau", "must lie in (0, 1]")


# ---------------------------------------------------------------------- the critic step
def critic_step(engine, target, batch: dict[str, torch.Tensor], cfg: ParlConfig,
                bins: int) -> dict[str, float]:
    """One IQL step on Q and V (one optimizer, one engine), then the target (a copy of the
    value functions, of which only Q is read) follows."""
    vf = engine.module
    s = (batch["text"], batch["pooled"], batch["proprio"])
    action = tokens_to_unit(batch["tokens"], bins)
    with torch.no_grad():
        q_target = target.q(*s, action).min(0).values
        next_v = vf.v(batch["text"], batch["next_pooled"], batch["next_proprio"])
    state = vf.encoder(*s)
    v = vf.v_of(state)
    v_loss = expectile_loss(q_target - v, cfg.expectile)
    q_all = vf.q_of(state, action)
    q_loss = iql_q_loss(q_all, td_targets(batch["reward"], batch["done"], next_v, cfg.gamma))
    engine.backward(v_loss + q_loss)
    engine.step()
    polyak(target, vf, cfg.target_tau)
    return {"q_loss": q_loss.item(), "v_loss": v_loss.item(), "q_mean": q_all.mean().item(),
            "v_mean": v.mean().item()}


# ---------------------------------------------------------------------- the policy step
def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.repeat_interleave(k, 0)


@torch.no_grad()
def sample_candidates(policy, text: torch.Tensor, feat: torch.Tensor, proprio: torch.Tensor,
                      k: int, temperature: float, rng: np.random.Generator) -> torch.Tensor:
    """(B, k, A) token vectors sampled from the policy at ``temperature`` (Gumbel-max, as
    the robots sample)."""
    b = text.shape[0]
    a, bins = policy.cfg.action_dim, policy.cfg.action_bins
    gumbel = torch.from_numpy(rng.gumbel(size=(b * k, a, bins)).astype(np.float32))
    tokens, _, _ = policy.act(_repeat(text, k), _repeat(feat, k), _repeat(proprio, k), gumbel,
                              torch.full((b * k,), temperature))
    return tokens.reshape(b, k, a)


@torch.no_grad()
def rank_candidates(q, text: torch.Tensor, pooled: torch.Tensor, proprio: torch.Tensor,
                    candidates: torch.Tensor, bins: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The candidate (B, k, A) the pessimistic Q (the smaller of the ensemble's; ``q`` is
    ``ValueFunctions.q``) scores best per state: (best tokens (B, A), scores (B, k), every
    member's scores (n, B, k))."""
    b, k, a = candidates.shape
    members = q(_repeat(text, k), _repeat(pooled, k), _repeat(proprio, k),
                tokens_to_unit(candidates.reshape(b * k, a), bins)).reshape(-1, b, k)
    scores = members.min(0).values
    return candidates[torch.arange(b), scores.argmax(1)], scores, members


def token_kl(anchor_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over states and action dimensions of KL(anchor || current), exact over the bins."""
    a = torch.log_softmax(anchor_logits, -1)
    return (a.exp() * (a - torch.log_softmax(logits, -1))).sum(-1).mean()


def candidate_advantages(scores: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """(B, k) pessimistic Q scores and (n, B, k) the members' -> each candidate's advantage
    over its state's mean, as a signal-to-noise ratio in (-1, 1): the centred score c over
    |c| + d, d the members' disagreement about the state's centred scores (their mean range).
    Zero where the Q-function tells the candidates apart nowhere, and small where its
    members disagree more than they prefer, so neither an uninformative nor an unsure Q moves
    the policy much (distilling one's own samples does: fitting a finite sample moves the
    policy at random, and a Q-function trained on a few thousand steps is mostly unsure
    about actions a few bins apart)."""
    centred = scores - scores.mean(1, keepdim=True)
    m = members - members.mean(2, keepdim=True)
    disagreement = (m.max(0).values - m.min(0).values).mean(1, keepdim=True)
    return centred / (centred.abs() + disagreement + 1e-8)


def improvement_loss(policy, vf, batch: dict[str, torch.Tensor], feat: torch.Tensor,
                     cfg: ParlConfig, rng: np.random.Generator
                     ) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy-improvement loss on ``batch``'s states (see ``ParlConfig.improve``);
    ``feat``: their pooled features spread back to the policy's input grid."""
    bins = policy.cfg.action_bins
    text, pooled, proprio = batch["text"], batch["pooled"], batch["proprio"]
    if cfg.improve == "awr":
        with torch.no_grad():
            q = vf.q(text, pooled, proprio, tokens_to_unit(batch["tokens"], bins)).min(0).values
            adv = q - vf.v(text, pooled, proprio)
            # in units of the batch's spread: one step's Q - V is tiny next to an episode's
            # return, so a fixed beta would weigh every action alike
            w = torch.exp(cfg.awr_beta * adv / (adv.std() + 1e-8)).clamp(max=cfg.awr_max_weight)
        logp, _, _ = policy.action_logprobs(text, feat, proprio, batch["tokens"],
                                            cfg.temperature)
        return -(w * logp).sum() / w.sum(), {"advantage": adv.mean().item(),
                                             "weight_max": w.max().item()}
    sampled = sample_candidates(policy, text, feat, proprio, cfg.candidates, cfg.temperature,
                                rng)
    cands = torch.cat([sampled, batch["tokens"][:, None]], 1)
    best, scores, members = rank_candidates(vf.q, text, pooled, proprio, cands, bins)
    stats = {"q_gain": (scores.max(1).values - scores.mean(1)).mean().item(),
             "q_disagreement": (members[0] - members[-1]).abs().mean().item(),
             "recorded_best": (scores.argmax(1) == cands.shape[1] - 1).float().mean().item()}
    if cfg.improve == "rank":  # PA-RL: the best candidate is the target
        logp, _, _ = policy.action_logprobs(text, feat, proprio, best, cfg.temperature)
        return -logp.mean(), stats
    b, k, a = cands.shape
    adv = candidate_advantages(scores, members)
    logp, _, _ = policy.action_logprobs(_repeat(text, k), _repeat(feat, k), _repeat(proprio, k),
                                        cands.reshape(b * k, a), cfg.temperature)
    return -(adv.reshape(-1) * logp).mean(), stats


def policy_step(engine, anchor, vf, batch: dict[str, torch.Tensor], bc_mb: dict | None,
                cfg: ParlConfig, bc_coef: float, rng: np.random.Generator) -> dict[str, float]:
    """One optimizer step on the improvement loss + ``kl_coef`` x KL to the update's anchor
    (+ ``bc_coef`` x behaviour cloning on the takeover/demonstration pool)."""
    policy = engine.module
    feat = unpool_features(batch["pooled"], policy.cfg.image_grid)
    loss, stats = improvement_loss(policy, vf, batch, feat, cfg, rng)
    stats["improve_loss"] = loss.item()
    logits, _ = policy.actor_forward(batch["text"], feat, batch["proprio"], batch["tokens"])
    with torch.no_grad():
        anchor_logits, _ = anchor.actor_forward(batch["text"], feat, batch["proprio"],
                                                batch["tokens"])
    kl = token_kl(anchor_logits / cfg.temperature, logits / cfg.temperature)
    loss = loss + cfg.kl_coef * kl
    stats["kl"] = kl.item()
    lp = torch.log_softmax(logits / cfg.temperature, -1)
    stats["entropy"] = -(lp.exp() * lp).sum(-1).mean().item()
    if bc_mb is not None and bc_coef > 0:
        b_loss, b_stats = bc_loss(policy, bc_mb)
        loss = loss + bc_coef * b_loss
        stats["bc_loss"] = b_stats["loss"]
    engine.backward(loss)
    engine.step()
    return stats


def _means(rows: list[dict[str, float]], prefix: str = "") -> dict[str, float]:
    keys = {k for r in rows for k in r}
    return {prefix + k: float(np.mean([r[k] for r in rows if k in r])) for k in sorted(keys)}


# ---------------------------------------------------------------------- the algorithm
@register("parl")
class Parl(Algorithm):
    """PA-RL with IQL value functions; see the module docstring. The value functions, their
    target, optimizer state and counters are its ``state_dict``; the replay is not (a
    restarted learner refills it from the episodes it consumes next)."""

    config_cls = ParlConfig
    wants_demo_episodes = True  # the learner hands it the replayed demos with rewards

    def __init__(self, cfg: ParlConfig, model: torch.nn.Module, ctx: Context) -> None:
        self.cfg, self.bc, self.seed = cfg, ctx.bc, ctx.seed
        mcfg = model.cfg
        self.grid, self.bins = mcfg.image_grid, mcfg.action_bins
        self.engine = ctx.make_engine(model, lr=cfg.lr, micro_batch=cfg.policy_batch,
                                      grad_clip=cfg.max_grad_norm)
        self.engine.eval()  # dropout off: the policy it distils into is the one it samples
        vf = ValueFunctions(self.grid ** 2, mcfg.proprio_dim, mcfg.action_dim)
        self.vf_engine = ctx.make_engine(vf, lr=cfg.critic_lr, micro_batch=cfg.critic_batch,
                                         grad_clip=cfg.max_grad_norm)
        vf = self.vf_engine.module
        self.target = copy.deepcopy(vf).requires_grad_(False)  # its q() is the target Q
        self.replay = Replay(cfg.replay_capacity, self.grid)
        self.rank, self.world = rank_and_world()
        self.updates = 0  # updates that moved the policy
        self.critic_updates = 0  # Q/V steps so far
        self._demo_keys: set[str] = set()

    def _fill(self, batch: UpdateBatch) -> None:
        for ep in batch.episodes:
            self.replay.add_episode(ep)
        for ep in batch.demos:
            if ep.key not in self._demo_keys:
                self._demo_keys.add(ep.key)
                self.replay.add_episode(ep, human=True)

    def update(self, batch: UpdateBatch) -> dict[str, Any]:
        cfg = self.cfg
        self._fill(batch)
        rng = np.random.default_rng([self.seed, batch.version, self.rank])
        n_critic = cfg.critic_steps + (cfg.critic_warmup_steps if not self.critic_updates else 0)
        critic_rows = [critic_step(self.vf_engine, self.target,
                                   self._share(self.replay.sample(rng, cfg.critic_batch)),
                                   cfg, self.bins) for _ in range(n_critic if len(self.replay)
                                                                  else 0)]
        self.critic_updates += len(critic_rows)
        pool: StepPool = batch.bc
        use_bc = self.bc.coef > 0 and len(pool) > 0
        bc_k = max(1, self.bc.batch_size // self.world)
        policy_rows = []
        if len(self.replay) and critic_rows and cfg.policy_steps:
            anchor = copy.deepcopy(self.engine.module).requires_grad_(False)
            for _ in range(cfg.policy_steps):
                mb = self._share(self.replay.sample(rng, cfg.policy_batch))
                policy_rows.append(policy_step(self.engine, anchor, self.vf_engine.module, mb,
                                               pool.sample(rng, bc_k) if use_bc else None,
                                               cfg, self.bc.coef, rng))
                if cfg.target_kl and mean_over_ranks(policy_rows[-1]["kl"]) > cfg.target_kl:
                    break  # as PPO's early stop: far enough from this update's start
        bc_rows = self._bc_only(pool, rng, bc_k) if use_bc else []
        learned = bool(policy_rows or bc_rows)
        self.updates += learned
        return {**_means(critic_rows), **_means(policy_rows), **_means(bc_rows),
                "critic_steps": len(critic_rows), "policy_steps": len(policy_rows),
                "replay_human": len(self.replay.human), "replay_online": len(self.replay.online),
                "learned": learned}

    def _share(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This process's share of a batch every process drew alike."""
        return batch if self.world == 1 else {k: v[self.rank::self.world]
                                              for k, v in batch.items()}

    def _bc_only(self, pool: StepPool, rng: np.random.Generator, k: int) -> list[dict]:
        """``bc.steps`` behaviour-cloning steps at ``bc.lr`` (takeovers, demonstrations)."""
        rows = []
        eng.set_lr(self.engine, self.bc.lr)
        try:
            for _ in range(self.bc.steps or 0):
                loss, st = bc_loss(self.engine.module, pool.sample(rng, k))
                self.engine.backward(self.bc.coef * loss)
                self.engine.step()
                rows.append({"bc_only_loss": st["loss"]})
        finally:
            eng.set_lr(self.engine, self.cfg.lr)
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "critic_updates": self.critic_updates,
                "value_functions": self.vf_engine.module.state_dict(),
                "target": self.target.state_dict(),
                "critic_optimizer": self.vf_engine.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.critic_updates = int(state["critic_updates"])
        self.vf_engine.module.load_state_dict(state["value_functions"])
        self.target.load_state_dict(state["target"])
        self.vf_engine.optimizer.load_state_dict(state["critic_optimizer"])

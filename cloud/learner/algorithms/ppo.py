"""PPO on action tokens from a quantized, remote, lagging behaviour policy.

Read top to bottom (CleanRL style): the config section, the batch of PPO samples (GAE and
the advantage estimators are in ``advantages``), the clipped loss, and the update the learner
calls (``PPO.update``); ``--algorithm.value separate`` gives GAE a value network of its own
(``ppo_value``).
Three log-probabilities meet here:

- ``b_behaviour_logp``: what the robot's INT8 copy of policy version v_b reported when it
  sampled the tokens;
- ``b_anchor_logp``: the learner's own full-precision weights at the start of the update,
  recomputed on the same observations and tokens (the PPO anchor; the edge's numbers are
  never used as the anchor, since INT8 and version lag make them a different policy);
- ``mb_new_logp``: the weights being optimised.

The ratio new/anchor is clipped as in PPO (Schulman et al. 2017, eq. 7); the gap between the
anchor and the behaviour policy is corrected with a truncated importance weight
min(rho_max, exp(anchor - behaviour)) (as V-trace/IMPALA truncate, Espeholt et al. 2018), and
samples whose version lags the learner by more than ``max_version_lag`` get weight 0.

One update: anchor log-probs and values of every step (dropout off, so the first minibatch's
ratio is 1), GAE per episode (the value targets), the advantages of the chosen estimator, then
``epochs`` passes over shuffled minibatches of ``ppo_loss`` plus ``bc.coef`` x behaviour
cloning on the BC pool, stopping early once an epoch's approx KL passes ``target_kl``; then
``bc.steps`` BC-only steps at ``bc.lr``. Takeover steps are never PPO samples.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from vlac.cloud.learner.actors import model_input
from vlac.cloud.learner.algorithms.advantages import (  # noqa: F401 (PPO's API)
    ADVANTAGES,
    Estimator,
    advantage_estimator,
    before_takeover,
    gae,
    group_advantages,
    window_sums,
)
from vlac.cloud.learner.algorithms.base import (
    Algorithm,
    AlgorithmConfig,
    Context,
    UpdateBatch,
    register,
)
from vlac.cloud.learner.distributed import mean_over_ranks, rank_and_world
from vlac.cloud.models import engine as eng
from vlac.cloud.models.vlac import bc_loss
from vlac.shared.config import check, opt

if TYPE_CHECKING:
    from vlac.cloud.learner.config import BCConfig
    from vlac.cloud.learner.episodes import EpisodeData
    from vlac.cloud.learner.replay import StepPool

PPO_STATS = ("pg_loss", "v_loss", "entropy", "approx_kl", "clipfrac", "mean_weight", "kl_ref")


@dataclass
class PPOConfig(AlgorithmConfig):
    name: str = opt("ppo", "The RL algorithm, by name (registered: ppo, parl).")
    advantage: Literal["group", "horizon", "gae"] = opt(
        "group", "group: every step of an episode gets the episode's return minus the mean "
        "return of its task's episodes in the batch (no value function needed); horizon: "
        "each step gets the reward of its next --algorithm.horizon steps minus that task's "
        "mean over the batch; gae: GAE with the value head.")
    group_by: Literal["task", "start"] = opt(
        "task", "The groups of --algorithm.advantage group: task (the batch's episodes of "
        "the same task) or start (those that began from the same first observation, as "
        "robots with --robot.layout-repeats start them; an episode alone gets 0).")
    horizon: int = opt(10, "Steps summed per advantage with --algorithm.advantage horizon.")
    negative_scale: float = opt(1.0, "Factor on negative advantages (group and horizon); "
                                "below 1 the update leans on imitating what went better "
                                "(0: only that).")
    epochs: int = opt(4, "PPO epochs over each batch.")
    minibatch_size: int = opt(64, "Steps per minibatch (over all processes).")
    lr: float = opt(3e-5, "Learning rate (AdamW, constant).")
    gamma: float = opt(0.99, "Discount.")
    gae_lambda: float = opt(0.95, "GAE lambda.")
    clip: float = opt(0.2, "PPO ratio clip.")
    target_kl: float = opt(0.05, "Stop the update's epochs early once an epoch's mean approx "
                           "KL to the anchor exceeds this (0: off).")
    vf_coef: float = opt(0.5, "Weight of the value loss (with --algorithm.advantage gae only: "
                         "the other estimators leave the value head untrained).")
    ent_coef: float = opt(0.0, "Weight of the entropy bonus.")
    kl_ref_coef: float = opt(0.0, "Weight of KL(policy || the --init policy) on the PPO "
                             "samples (0: off, no reference copy is kept).")
    temperature: float = opt(1.0, "Sampling temperature of the robots: PPO scores their "
                             "tokens under softmax(logits / T), so give the robots' value.")
    token_sigma: float = opt(0.0, "Credit each sampled token's neighbourhood: PPO's "
                             "log-probability of a token (in its ratio and the KL to the "
                             "reference) is the mean log-probability of the bins around it, "
                             "Gaussian-weighted with this std in bins, as BC's soft targets "
                             "(0: the token alone).")
    rho_max: float = opt(1.0, "Truncation of the importance weight anchor/behaviour.")
    max_version_lag: int = opt(4, "Steps of policies older than this many versions get "
                               "weight 0.")
    max_grad_norm: float = opt(1.0, "Gradient clipping (DeepSpeed).")
    value: Literal["shared", "separate"] = opt(
        "shared", "The value function of --algorithm.advantage gae: shared (the value head "
        "on the policy's trunk) or separate (a network of its own, at --algorithm.vf-lr, "
        "fitted alone for --algorithm.vf-warmup-updates updates first: ppo_value).")
    vf_lr: float = opt(3e-4, "Learning rate of the separate value network.")
    vf_epochs: int = opt(4, "Passes over each batch fitting the separate value network.")
    vf_warmup_updates: int = opt(1, "First updates that fit only the separate value network.")

    def __post_init__(self) -> None:
        check(self.value in ("shared", "separate"), "algorithm.value", "use shared or separate")
        check(self.value == "shared" or self.advantage == "gae", "algorithm.value",
              "a separate value network serves --algorithm.advantage gae only")
        check(self.vf_lr > 0 and self.vf_epochs >= 1 and self.vf_warmup_updates >= 0,
              "algorithm.vf_lr", "vf_lr > 0, vf_epochs >= 1, vf_warmup_updates >= 0")
        check(self.advantage in ADVANTAGES, "algorithm.advantage",
              f"use one of {', '.join(ADVANTAGES)}")
        check(self.group_by in ("task", "start"), "algorithm.group_by", "use task or start")
        check(self.horizon >= 1, "algorithm.horizon", "must be >= 1")
        check(0 <= self.negative_scale <= 1, "algorithm.negative_scale", "must lie in [0, 1]")
        check(self.epochs >= 1, "algorithm.epochs", "must be >= 1")
        check(self.minibatch_size >= 1, "algorithm.minibatch_size", "must be >= 1")
        check(self.lr > 0, "algorithm.lr", "must be > 0")
        check(0 <= self.gamma <= 1, "algorithm.gamma", "must lie in [0, 1]")
        check(0 <= self.gae_lambda <= 1, "algorithm.gae_lambda", "must lie in [0, 1]")
        check(self.clip > 0, "algorithm.clip", "must be > 0 (0.1-0.3 is usual)")
        check(self.target_kl >= 0, "algorithm.target_kl", "must be >= 0 (0: off)")
        check(self.rho_max > 0, "algorithm.rho_max", "must be > 0")
        check(0 <= self.token_sigma <= 64, "algorithm.token_sigma",
              "must lie in [0, 64] bins (0: off; 1-4 credits a neighbourhood)")
        check(self.max_version_lag >= 0, "algorithm.max_version_lag", "must be >= 0")
        check(self.max_grad_norm > 0, "algorithm.max_grad_norm", "must be > 0")
        check(self.kl_ref_coef >= 0, "algorithm.kl_ref_coef", "must be >= 0 (0: off)")
        check(self.temperature > 0, "algorithm.temperature", "must be > 0 (the robots' "
              "sampling temperature)")


# ---------------------------------------------------------------------- the PPO samples
def build_batch(episodes: list[EpisodeData], anchors: list[tuple[np.ndarray, np.ndarray]],
                version: int, cfg: PPOConfig, refs: list[np.ndarray] | None = None,
                bumps: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """GAE per episode (the value targets), then the PPO samples: used, policy-chosen,
    not-too-stale steps, with the advantages of ``cfg.advantage``. ``anchors``: (log-prob,
    value) per step of each episode; ``refs``: the reference policy's log-probs per episode
    (the ``b_ref_logp`` column, for ``kl_ref_coef``); ``bumps``: the anchor's log-probs of
    the tokens' neighbourhoods (the ``b_anchor_bump_logp`` column, for ``token_sigma``).
    {} when no episode has a used step."""
    estimator = ADVANTAGES[cfg.advantage]
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "text", "feat", "proprio", "tokens", "b_behaviour_logp", "b_anchor_logp",
        "b_values", "b_advantages", "b_returns", "b_version_lag", "b_episode", "b_step")}
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
        if not estimator.uses_values:
            keep[before_takeover(ep):] = False
        cols["text"].append(np.repeat(ep.text[None], int(keep.sum()), 0))
        for name, arr in (("feat", ep.feat), ("proprio", ep.proprio), ("tokens", ep.tokens),
                          ("b_behaviour_logp", ep.logprob), ("b_anchor_logp", logp),
                          ("b_values", values), ("b_advantages", adv), ("b_returns", ret),
                          ("b_version_lag", lag)):
            cols[name].append(arr[:n][keep])
        cols["b_episode"].append(np.full(int(keep.sum()), i))
        cols["b_step"].append(np.flatnonzero(keep))
        if refs is not None:
            cols.setdefault("b_ref_logp", []).append(refs[i][:n][keep])
        if bumps is not None:
            cols.setdefault("b_anchor_bump_logp", []).append(bumps[i][:n][keep])
    if not cols["text"]:
        return {}
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["b_advantages"] = estimator.fn(episodes, out, cfg)
    del out["b_episode"], out["b_step"]
    return out


# ---------------------------------------------------------------------- the loss
def truncated_importance(anchor_logp: torch.Tensor, behaviour_logp: torch.Tensor,
                         version_lag: torch.Tensor, rho_max: float = 1.0,
                         max_version_lag: int = 4) -> torch.Tensor:
    """Per-sample weight correcting the behaviour policy toward the anchor: truncated
    exp(anchor - behaviour), zero when the sample's policy version is too stale."""
    rho = torch.exp(anchor_logp - behaviour_logp).clamp(max=rho_max)
    return torch.where(version_lag <= max_version_lag, rho, torch.zeros_like(rho))


def ppo_loss(mb_new_logp: torch.Tensor, mb_anchor_logp: torch.Tensor,
             mb_behaviour_logp: torch.Tensor, mb_advantages: torch.Tensor,
             mb_returns: torch.Tensor, mb_values: torch.Tensor, mb_entropy: torch.Tensor,
             mb_version_lag: torch.Tensor, *, clip: float = 0.2, vf_coef: float = 0.5,
             ent_coef: float = 0.0, rho_max: float = 1.0, max_version_lag: int = 4,
             normalize_advantages: bool = True, mb_ref_logp: torch.Tensor | None = None,
             kl_ref_coef: float = 0.0, mb_ratio_anchor_logp: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO on token log-probs, weighted by the truncated importance weight, plus
    ``kl_ref_coef`` x KL(new || reference) when ``mb_ref_logp`` (a frozen reference policy's
    log-probs of the same tokens) is given: the k3 estimator exp(r) - r - 1 with
    r = ref - new, non-negative, on the batch's samples (as GRPO uses it).

    With ``mb_ratio_anchor_logp`` the ratio is new / that instead of new / anchor: with
    ``token_sigma``, ``mb_new_logp`` and it are of the tokens' neighbourhoods, while the
    importance weight stays exact, of the tokens the robot sampled.

    All inputs are (N,). Returns (loss, metrics)."""
    weight = truncated_importance(mb_anchor_logp, mb_behaviour_logp, mb_version_lag,
                                  rho_max, max_version_lag).detach()
    adv = mb_advantages
    if normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio_anchor = mb_anchor_logp if mb_ratio_anchor_logp is None else mb_ratio_anchor_logp
    log_ratio = mb_new_logp - ratio_anchor
    ratio = log_ratio.exp()
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1 - clip, 1 + clip)
    denom = weight.sum().clamp(min=1e-8)
    pg_loss = (weight * torch.max(pg1, pg2)).sum() / denom
    v_loss = 0.5 * (weight * (mb_values - mb_returns) ** 2).sum() / denom
    entropy = (weight * mb_entropy).sum() / denom
    loss = pg_loss + vf_coef * v_loss - ent_coef * entropy
    extra = {}
    if mb_ref_logp is not None:
        r = mb_ref_logp - mb_new_logp
        kl_ref = (weight * (r.exp() - r - 1)).sum() / denom
        loss = loss + kl_ref_coef * kl_ref
        extra["kl_ref"] = kl_ref.item()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()  # http://joschu.net/blog/kl-approx.html
        clipfrac = ((ratio - 1).abs() > clip).float().mean()
    return loss, {"pg_loss": pg_loss.item(), "v_loss": v_loss.item(),
                  "entropy": entropy.item(), "approx_kl": approx_kl.item(),
                  "clipfrac": clipfrac.item(), "mean_weight": weight.mean().item(),
                  "stale_fraction": (mb_version_lag > max_version_lag).float().mean().item(),
                  **extra}


# ---------------------------------------------------------------------- the update
@torch.no_grad()
def anchor_pass(model, episodes: list[EpisodeData], batch: int = 256,
                temperature: float = 1.0, sigma: float = 0.0
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The learner's own weights at the start of the update: (log-prob, value) per step
    (log-probs of the tokens' neighbourhoods with ``sigma``)."""
    out = []
    for ep in episodes:
        logps, values = [], []
        for s in range(0, len(ep), batch):
            sl = slice(s, s + batch)
            n = len(ep.proprio[sl])
            logp, _, value = model.action_logprobs(
                model_input("text", np.repeat(ep.text[None], n, 0)),
                model_input("feat", ep.feat[sl]), model_input("proprio", ep.proprio[sl]),
                model_input("tokens", ep.tokens[sl]), temperature, sigma)
            logps.append(logp.float().cpu().numpy())
            values.append(value.float().cpu().numpy())
        out.append((np.concatenate(logps), np.concatenate(values)))
    return out


def _to_torch(b: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: model_input(k, v[idx]) for k, v in b.items()}


def train_minibatch(engine, mb: dict[str, torch.Tensor] | None,
                    bc_mb: dict[str, torch.Tensor] | None, cfg: PPOConfig, bc_coef: float
                    ) -> dict[str, float]:
    """One optimizer step: clipped PPO on ``mb`` plus ``bc_coef`` x BC on ``bc_mb``."""
    model, values = engine.module, ADVANTAGES[cfg.advantage].uses_values
    loss, stats = None, {}
    if mb is not None:
        new_logp, entropy, new_value = model.action_logprobs(
            mb["text"], mb["feat"], mb["proprio"], mb["tokens"], cfg.temperature,
            cfg.token_sigma)
        loss, stats = ppo_loss(new_logp, mb["b_anchor_logp"], mb["b_behaviour_logp"],
                               mb["b_advantages"], mb["b_returns"], new_value, entropy,
                               mb["b_version_lag"], clip=cfg.clip,
                               vf_coef=cfg.vf_coef if values else 0.0,
                               ent_coef=cfg.ent_coef, rho_max=cfg.rho_max,
                               max_version_lag=cfg.max_version_lag,
                               normalize_advantages=values,
                               mb_ref_logp=mb.get("b_ref_logp"), kl_ref_coef=cfg.kl_ref_coef,
                               mb_ratio_anchor_logp=mb.get("b_anchor_bump_logp"))
    if bc_mb is not None and bc_coef > 0:
        b_loss, b_stats = bc_loss(model, bc_mb)
        loss = bc_coef * b_loss if loss is None else loss + bc_coef * b_loss
        stats["bc_loss"] = b_stats["loss"]
    if loss is None:
        raise ValueError("a minibatch needs PPO samples or behaviour-cloning steps")
    engine.backward(loss)
    engine.step()
    return stats


def ppo_update(engine, batch: dict[str, np.ndarray], pool: StepPool, cfg: PPOConfig,
               bc: BCConfig, seed: int, rank: int = 0, world: int = 1) -> dict[str, float]:
    """``epochs`` passes over shuffled minibatches; each process trains on its share of
    every minibatch (the same shuffle everywhere). An epoch whose mean approx KL exceeds
    ``target_kl`` is the last (CleanRL's early stop). Then ``bc.steps`` BC-only steps at
    ``bc.lr``. Returns the mean of each metric ({}: nothing to learn from)."""
    n = len(batch.get("tokens", ()))
    if n < world:  # too few to give every process a sample: no PPO term this time
        n = 0
    if n and not ADVANTAGES[cfg.advantage].uses_values and not np.any(batch["b_advantages"]):
        n = 0  # every episode tied with its group: no signal, and no step may move the policy
    n_mb = max(1, min(math.ceil(n / cfg.minibatch_size), n // world)) if n else 1
    use_bc = bc.coef > 0 and len(pool) > 0
    if n == 0 and not use_bc:
        return {}
    shuffle = np.random.default_rng([seed, 0])
    bc_rng = np.random.default_rng([seed, 1, rank])
    bc_k = max(1, bc.batch_size // world)
    sums: dict[str, list[float]] = {}
    epochs = 0
    for _ in range(cfg.epochs):
        epochs += 1
        perm = shuffle.permutation(n)
        kls = []
        for chunk in np.array_split(perm, n_mb):
            mb = _to_torch(batch, chunk[rank::world]) if n else None
            stats = train_minibatch(engine, mb, pool.sample(bc_rng, bc_k) if use_bc else None,
                                    cfg, bc.coef)
            kls.append(stats.get("approx_kl", 0.0))
            for k, v in stats.items():
                sums.setdefault(k, []).append(v)
        if n and cfg.target_kl and mean_over_ranks(float(np.mean(kls))) > cfg.target_kl:
            break
    if use_bc and bc.steps:  # behaviour cloning alone, at its own learning rate
        eng.set_lr(engine, bc.lr)
        try:
            for _ in range(bc.steps):
                stats = train_minibatch(engine, None, pool.sample(bc_rng, bc_k), cfg, bc.coef)
                sums.setdefault("bc_only_loss", []).append(stats["bc_loss"])
        finally:
            eng.set_lr(engine, cfg.lr)
    return {**{k: float(np.mean(v)) for k, v in sums.items()}, "epochs": epochs}


@register("ppo")
class PPO(Algorithm):
    """PPO plus behaviour cloning on one DeepSpeed engine (AdamW at ``lr``), with dropout
    off so that the anchors and the ratios come from the same function. With
    ``kl_ref_coef`` > 0 it keeps a frozen copy of the policy it was given (the ``--init``
    policy: it is made before a resume moves the weights). Its randomness is seeded per
    version, so beyond the engine it keeps only a count of its updates."""

    config_cls = PPOConfig

    def __init__(self, cfg: PPOConfig, model: torch.nn.Module, ctx: Context) -> None:
        self.cfg, self.bc, self.seed = cfg, ctx.bc, ctx.seed
        self.reference = None
        if cfg.kl_ref_coef > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.engine = ctx.make_engine(model, lr=cfg.lr,
                                      micro_batch=max(1, cfg.minibatch_size // ctx.world),
                                      grad_clip=cfg.max_grad_norm)
        self.engine.eval()
        self.rank, self.world = rank_and_world()
        self.updates = 0  # updates that changed the weights, over every run of this learner
        self.seen = 0  # updates, learned or not (the separate value network's warm-up)
        self.value = None
        if cfg.value == "separate":
            from vlac.cloud.learner.algorithms.ppo_value import SeparateValue

            self.value = SeparateValue(cfg, model.cfg.image_grid, model.cfg.proprio_dim,
                                       ctx.make_engine, self.world, self.rank)

    def update(self, batch: UpdateBatch) -> dict[str, Any]:
        cfg, episodes = self.cfg, batch.episodes
        t, w = cfg.temperature, cfg.token_sigma
        anchors = anchor_pass(self.engine.module, episodes, temperature=t)
        bumps = None if w == 0 else [
            logp for logp, _ in anchor_pass(self.engine.module, episodes, temperature=t, sigma=w)]
        refs = None if self.reference is None else [
            logp for logp, _ in anchor_pass(self.reference, episodes, temperature=t, sigma=w)]
        fitted = {}
        if self.value is not None:  # GAE on the separate network's values, then fit it
            anchors = [(lp, v) for (lp, _), v in zip(anchors, self.value.values(episodes),
                                                     strict=True)]
        samples = build_batch(episodes, anchors, batch.version, cfg, refs, bumps)
        if self.value is not None and samples:
            fitted = self.value.fit(samples, self.seed + batch.version)
        warm = self.value is not None and self.seen < cfg.vf_warmup_updates
        self.seen += 1
        train = {} if warm else ppo_update(
            self.engine, samples, batch.bc, dataclasses.replace(cfg, vf_coef=0.0)
            if self.value is not None else cfg, self.bc, seed=self.seed + batch.version,
            rank=self.rank, world=self.world)
        lags = np.concatenate([batch.version - ep.policy_version[:len(ep.rewards)]
                               [~ep.intervention[:len(ep.rewards)]] for ep in episodes])
        stats: dict[str, Any] = {
            "ppo_samples": len(samples.get("tokens", ())),
            "stale_fraction": float((lags > cfg.max_version_lag).mean()) if len(lags) else 0.0,
            **{k: float("nan") for k in (*PPO_STATS, "bc_loss", "bc_only_loss")},
            **{k: v for k, v in train.items() if k in (*PPO_STATS, "bc_loss", "bc_only_loss")},
            "epochs": train.get("epochs", 0), **fitted}
        if samples:
            ret, val = samples["b_returns"], samples["b_values"]
            var = float(np.var(ret))
            stats["explained_variance"] = float(1 - np.var(ret - val) / var) if var > 0 \
                else float("nan")
        stats["learned"] = bool(train)
        self.updates += stats["learned"]
        return stats

    def state_dict(self) -> dict[str, Any]:
        extra = {} if self.value is None else {"seen": self.seen,
                                               "value": self.value.state_dict()}
        return {"updates": self.updates, **extra}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        if self.value is not None and "value" in state:
            self.seen = int(state["seen"])
            self.value.load_state_dict(state["value"])

"""PPO on action tokens from a quantized, remote, lagging behaviour policy: the maths.

Pure functions, read top to bottom (CleanRL style); the DeepSpeed backward/step stay in the
caller. Three log-probabilities meet here:

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
"""

from __future__ import annotations

import numpy as np
import torch


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
             kl_ref_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped PPO on token log-probs, weighted by the truncated importance weight, plus
    ``kl_ref_coef`` x KL(new || reference) when ``mb_ref_logp`` (a frozen reference policy's
    log-probs of the same tokens) is given: the k3 estimator exp(r) - r - 1 with
    r = ref - new, non-negative, on the batch's samples (as GRPO uses it).

    All inputs are (N,). Returns (loss, metrics)."""
    weight = truncated_importance(mb_anchor_logp, mb_behaviour_logp, mb_version_lag,
                                  rho_max, max_version_lag).detach()
    adv = mb_advantages
    if normalize_advantages and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    log_ratio = mb_new_logp - mb_anchor_logp
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

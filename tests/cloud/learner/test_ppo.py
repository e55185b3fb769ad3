"""PPO's maths pinned on hand-computed cases (GAE against the plain loop, the clipped loss,
the importance weights, the KL term) and its advantage estimators."""

import math
import typing

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vlac.cloud.learner.algorithms.ppo import (
    ADVANTAGES,
    PPOConfig,
    build_batch,
    gae,
    group_advantages,
    ppo_loss,
    truncated_importance,
    window_sums,
)
from vlac.cloud.learner.episodes import EpisodeData
from vlac.cloud.learner.rewards import shape_rewards
from vlac.cloud.models.vlac import token_logprobs
from vlac.shared.config import ConfigError


def gae_loop(rewards, values, dones, last_value, gamma, lam):
    """The plain definition: A_t = sum_k (gamma*lam)^k delta_{t+k}, cut at episode ends."""
    n = len(rewards)
    out = []
    for t in range(n):
        total, discount = 0.0, 1.0
        for k in range(t, n):
            nv = last_value if k == n - 1 else values[k + 1]
            delta = rewards[k] + gamma * nv * (1 - dones[k]) - values[k]
            total += discount * delta
            if dones[k]:
                break
            discount *= gamma * lam
        out.append(total)
    return np.array(out)


@given(n=st.integers(1, 30), seed=st.integers(0, 10_000),
       gamma=st.floats(0.5, 1.0), lam=st.floats(0.0, 1.0))
@settings(max_examples=150, deadline=None)
def test_gae_matches_the_plain_loop(n, seed, gamma, lam):
    rng = np.random.default_rng(seed)
    r, v = rng.normal(size=n), rng.normal(size=n)
    d = (rng.random(n) < 0.2).astype(float)
    last = float(rng.normal())
    adv, ret = gae(r, v, d, last, gamma, lam)
    np.testing.assert_allclose(adv, gae_loop(r, v, d, last, gamma, lam), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ret, adv + v, rtol=1e-5, atol=1e-5)


def test_gae_two_steps_by_hand():
    # r=[1,2], v=[0.5,0.25], episode ends at t=1, gamma=0.9, lam=0.8
    adv, _ = gae(np.array([1.0, 2.0]), np.array([0.5, 0.25]), np.array([0, 1]), 9.0, 0.9, 0.8)
    d1 = 2.0 - 0.25
    d0 = 1.0 + 0.9 * 0.25 - 0.5
    np.testing.assert_allclose(adv, [d0 + 0.9 * 0.8 * d1, d1], rtol=1e-6)


def t(*x):
    return torch.tensor(x, dtype=torch.float32)


def test_truncated_importance_by_hand():
    w = truncated_importance(t(math.log(0.5), math.log(0.9), 0.0), t(math.log(0.25), 0.0, 0.0),
                             t(0, 1, 9), rho_max=1.0, max_version_lag=4)
    # exp(log .5 - log .25) = 2 -> truncated to 1; 0.9 stays; lag 9 > 4 -> 0
    torch.testing.assert_close(w, t(1.0, 0.9, 0.0))


def test_clipped_objective_by_hand():
    # one sample, advantage +1, ratio 1.5 (clipped to 1.2) -> pg = -1.2 (max of -1.5, -1.2)
    args = dict(mb_anchor_logp=t(0.0), mb_behaviour_logp=t(0.0), mb_advantages=t(1.0),
                mb_returns=t(2.0), mb_values=t(1.0), mb_entropy=t(0.3),
                mb_version_lag=t(0), clip=0.2, vf_coef=0.5, ent_coef=0.1,
                normalize_advantages=False)
    loss, m = ppo_loss(t(math.log(1.5)), **args)
    assert math.isclose(m["pg_loss"], -1.2, rel_tol=1e-6)
    assert math.isclose(m["v_loss"], 0.5, rel_tol=1e-6)
    assert math.isclose(loss.item(), -1.2 + 0.5 * 0.5 - 0.1 * 0.3, rel_tol=1e-6)
    assert m["clipfrac"] == 1.0
    # negative advantage, ratio 0.5 (clipped to 0.8): max(0.5, 0.8) = 0.8
    args["mb_advantages"] = t(-1.0)
    _, m = ppo_loss(t(math.log(0.5)), **args)
    assert math.isclose(m["pg_loss"], 0.8, rel_tol=1e-6)


def test_weights_scale_samples_and_stale_ones_drop_out():
    new = torch.zeros(2, requires_grad=True)
    loss, m = ppo_loss(new, mb_anchor_logp=t(0.0, 0.0), mb_behaviour_logp=t(0.0, 0.0),
                       mb_advantages=t(1.0, -1.0), mb_returns=t(0.0, 0.0),
                       mb_values=t(0.0, 0.0), mb_entropy=t(0.0, 0.0),
                       mb_version_lag=t(0, 10), normalize_advantages=False)
    loss.backward()
    # only the fresh sample (advantage +1) pushes its log-prob up
    torch.testing.assert_close(new.grad, t(-1.0, 0.0))
    assert m["stale_fraction"] == 0.5


def test_kl_to_the_reference_by_hand():
    # new log-prob 0, reference log(0.5): r = log .5, k3 = exp(r) - r - 1 = 0.5 + ln 2 - 1
    new = torch.zeros(1, requires_grad=True)
    args = dict(mb_anchor_logp=t(0.0), mb_behaviour_logp=t(0.0), mb_advantages=t(0.0),
                mb_returns=t(0.0), mb_values=t(0.0), mb_entropy=t(0.0), mb_version_lag=t(0),
                normalize_advantages=False, vf_coef=0.0)
    loss, m = ppo_loss(new, mb_ref_logp=t(math.log(0.5)), kl_ref_coef=2.0, **args)
    assert math.isclose(m["kl_ref"], 0.5 + math.log(2) - 1, rel_tol=1e-6)
    assert math.isclose(loss.item(), 2.0 * m["kl_ref"], rel_tol=1e-6)
    loss.backward()  # d/dnew = coef * (1 - exp(ref - new)) = 2 * 0.5: descent lowers new
    torch.testing.assert_close(new.grad, t(1.0))
    # at the reference the term and its gradient vanish; without a reference it is absent
    new = torch.full((1,), math.log(0.5), requires_grad=True)
    loss, m = ppo_loss(new, mb_ref_logp=t(math.log(0.5)), kl_ref_coef=2.0, **args)
    loss.backward()
    assert m["kl_ref"] == 0.0 and new.grad.abs().item() < 1e-6
    assert "kl_ref" not in ppo_loss(new, **args)[1]


def test_token_logprobs_of_a_neighbourhood_by_hand():
    logp = torch.tensor([[[0.1, 0.2, 0.4, 0.2, 0.1]]]).log()
    tok = torch.tensor([[2]])
    assert math.isclose(token_logprobs(logp, tok).exp().item(), 0.4, rel_tol=1e-6)
    # sigma 1 around bin 2: weights exp(-k^2 / 2) for k = -2..2, normalised
    w = np.exp(-0.5 * np.arange(-2, 3) ** 2)
    w /= w.sum()
    expected = float((w * np.log([0.1, 0.2, 0.4, 0.2, 0.1])).sum())
    assert math.isclose(token_logprobs(logp, tok, 1.0).item(), expected, rel_tol=1e-5)
    # at the edge the bump is cut and renormalised: bins 0 and 1 only (bins 2-4 negligible)
    w0 = np.exp(-0.5 * np.arange(5) ** 2 / 0.25)
    w0 /= w0.sum()
    edge = float((w0 * np.log([0.1, 0.2, 0.4, 0.2, 0.1])).sum())
    assert math.isclose(token_logprobs(logp, torch.tensor([[0]]), 0.5).item(), edge,
                        rel_tol=1e-5)


def test_the_bump_sets_the_ratio_and_the_sampled_token_the_weight():
    # ratio: exp(log .6 - log .5) = 1.2 from the bumps' log-probs; the importance weight
    # exp(anchor - behaviour) = 0.5 from the tokens' own: pg = -0.5 * 1.2 / 0.5
    args = dict(mb_behaviour_logp=t(math.log(0.2)), mb_advantages=t(1.0), mb_returns=t(0.0),
                mb_values=t(0.0), mb_entropy=t(0.0), mb_version_lag=t(0), clip=0.5,
                normalize_advantages=False, vf_coef=0.0)
    _, m = ppo_loss(t(math.log(0.6)), mb_anchor_logp=t(math.log(0.1)),
                    mb_ratio_anchor_logp=t(math.log(0.5)), **args)
    assert math.isclose(m["pg_loss"], -1.2, rel_tol=1e-6)
    assert math.isclose(m["mean_weight"], 0.5, rel_tol=1e-6)
    assert PPOConfig(token_sigma=3.0).token_sigma == 3.0
    with pytest.raises(ConfigError, match="token_sigma"):
        PPOConfig(token_sigma=-1.0)


def _credited(sigma: float, rewarded=(97, 103), steps: int = 20) -> torch.Tensor:
    """A peaked 256-bin distribution (BC's shape, peak at bin 90) after gradient steps that
    raise the log-probs of rewarded samples: the final distribution."""
    bins = torch.arange(256).float()
    logits = (-0.5 * ((bins - 90) / 6) ** 2)[None, None].clone().requires_grad_(True)
    opt = torch.optim.SGD([logits], lr=2.0)
    tokens = torch.tensor([[r] for r in rewarded])
    for _ in range(steps):
        opt.zero_grad()
        logp_all = torch.log_softmax(logits, -1).expand(len(rewarded), 1, 256)
        (-token_logprobs(logp_all, tokens, sigma)).sum().backward()
        opt.step()
    return logits.detach().softmax(-1)[0, 0]


def test_a_bump_moves_the_argmax_to_where_rewarded_samples_cluster():
    """The toy problem: two rewarded samples at bins 97 and 103. Credited alone, each becomes
    a spike and the argmax lands on one of them, with the bins between them lower than at
    the start; credited as bumps (sigma 3), every bin between them rises and the argmax
    moves to their middle."""
    bins = torch.arange(256).float()
    start = (-0.5 * ((bins - 90) / 6) ** 2).softmax(-1)
    alone, bump = _credited(0.0), _credited(3.0)
    assert int(alone.argmax()) in (97, 103) and (alone[98:103] < start[98:103]).all()
    assert 98 <= int(bump.argmax()) <= 102 and (bump[97:104] > start[97:104]).all()


def test_window_sums_look_ahead_horizon_steps():
    r = np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(window_sums(r, 2, 4), [3, 5, 7, 4])
    np.testing.assert_allclose(window_sums(r, 10, 5), [10, 9, 7, 4, 0])  # past the end: 0
    np.testing.assert_allclose(window_sums(r[:2], 1, 4), [1, 2, 0, 0])


def _episode(n, success, task="t", start=""):
    rewards, terminal = shape_rewards("sparse", n, success)
    return EpisodeData(key=f"{task}-{n}", success=success, text=np.zeros(384, np.float32),
                       feat=np.zeros((n, 1), np.float16), proprio=np.zeros((n, 4), np.float32),
                       tokens=np.zeros((n, 4), np.int64), logprob=np.zeros(n, np.float32),
                       policy_version=np.zeros(n, np.int64), intervention=np.zeros(n, bool),
                       rewards=rewards, terminal=terminal, task=task, start=start)


def test_group_advantages_weigh_every_episode_the_same():
    """A 150-step failure and a 50-step success: equal and opposite advantage mass, so the
    failure's many steps do not turn the update into pushing sampled tokens down."""
    eps = [_episode(150, False), _episode(50, True)]
    anchors = [(np.zeros(len(e)), np.zeros(len(e))) for e in eps]
    b = build_batch(eps, anchors, 0, PPOConfig())
    fail, win = b["b_advantages"][:149], b["b_advantages"][149:]
    assert len(fail) == 149 and len(win) == 50  # the failure bootstraps: one step fewer
    assert fail.sum() == pytest.approx(-win.sum(), rel=1e-5) and win.sum() > 0
    assert np.ptp(fail) == 0 and np.ptp(win) == 0
    # negative_scale shrinks only the failure's side
    half = build_batch(eps, anchors, 0, PPOConfig(negative_scale=0.5))
    np.testing.assert_allclose(half["b_advantages"][:149], fail * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(half["b_advantages"][149:], win)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the empty batch
def test_group_advantages_compare_episodes_of_the_same_task():
    adv = group_advantages([1.0, 0.0, 0.5, 0.5, 3.0], ["a", "a", "b", "b", "c"])
    # a: +-0.5 around its mean; b: both equal, 0; c alone: against the batch mean (1.0)
    raw = np.array([0.5, -0.5, 0.0, 0.0, 2.0])
    np.testing.assert_allclose(adv, raw / raw.std(), atol=1e-6)
    np.testing.assert_array_equal(group_advantages([0.2, 0.2], ["a", "a"]), [0, 0])
    assert group_advantages([], []).size == 0


def test_group_by_start_compares_only_rollouts_from_the_same_state():
    """GRPO-style groups: layout A (one success, one failure) gives +-1 before scaling,
    layout B (both failed) ties, and the episode alone from C gets 0 rather than the
    batch's layout luck."""
    adv = group_advantages([1.0, 0.0, 0.0, 0.0, 1.0], ["A", "A", "B", "B", "C"],
                           alone="zero")
    np.testing.assert_allclose(adv, np.array([0.5, -0.5, 0, 0, 0]) / 0.31622776, rtol=1e-5)
    eps = [_episode(50, True, start="A"), _episode(150, False, start="A"),
           _episode(150, False, start="B"), _episode(150, False, start="B"),
           _episode(50, True, start="C")]
    anchors = [(np.zeros(len(e)), np.zeros(len(e))) for e in eps]
    ends = np.cumsum([50, 149, 149, 149, 50])  # a failure bootstraps: one sample fewer

    def per_episode(cfg):
        adv = build_batch(eps, anchors, 0, cfg)["b_advantages"]
        return np.array([p.sum() for p in np.split(adv, ends[:-1])])

    start = per_episode(PPOConfig(group_by="start"))
    assert start[0] > 0 and start[1] == pytest.approx(-start[0], rel=1e-5)
    np.testing.assert_array_equal(start[2:], 0)
    assert per_episode(PPOConfig())[4] > 0  # by task, C's success counts
    with pytest.raises(ConfigError, match="group_by"):
        PPOConfig(group_by="layout")


def test_every_advantage_option_is_a_registered_estimator():
    choices = typing.get_args(typing.get_type_hints(PPOConfig)["advantage"])
    assert set(choices) == set(ADVANTAGES) == {"gae", "group", "horizon"}
    assert [n for n, e in ADVANTAGES.items() if e.uses_values] == ["gae"]


# ---------------------------------------------------------------------- a separate value network
def test_a_separate_value_network_warms_up_alone_then_serves_gae():
    from tests.cloud.learner.test_parl import episode
    from vlac.cloud.learner.algorithms import Context, UpdateBatch, make_algorithm
    from vlac.cloud.learner.replay import StepPool
    from vlac.cloud.models import engine as eng
    from vlac.cloud.models.vlac import SmallVLAC, VLACConfig
    from vlac.shared.hitl import BCConfig

    with pytest.raises(ConfigError, match=r"serves --algorithm\.advantage gae only"):
        PPOConfig(value="separate")
    torch.manual_seed(0)
    model = SmallVLAC(VLACConfig(d_model=32, layers=1, heads=2, ff=64, dropout=0.0))
    cfg = PPOConfig(advantage="gae", value="separate", vf_lr=3e-3, vf_epochs=8,
                    minibatch_size=16, epochs=1, target_kl=0.0)
    algo = make_algorithm(cfg, model, Context(bc=BCConfig(coef=0.0), seed=0, world=1,
                                              make_engine=eng.make_engine))
    # a return that the state tells: reward 1 on every step of episode 0, 0 on episode 1's
    eps = [episode(12, rewards=[float(i == 0)] * 12, terminal=True, seed=i) for i in range(2)]
    head = model.value_head.weight.detach().clone()
    first = algo.update(UpdateBatch(eps, StepPool([]), 0))
    assert not first["learned"] and first["value_net_loss"] > 0  # the warm-up: V alone
    later = [algo.update(UpdateBatch(eps, StepPool([]), 0)) for _ in range(3)]
    assert all(s["learned"] for s in later)
    assert later[-1]["value_net_loss"] < 0.5 * first["value_net_loss"]
    assert later[-1]["explained_variance"] > first["explained_variance"]
    # the policy's value head gets no gradient (only AdamW's weight decay moves it)
    torch.testing.assert_close(model.value_head.weight.detach(), head, atol=1e-4, rtol=0)
    state = algo.state_dict()
    assert state["seen"] == 4 and set(state["value"]) == {"weights", "optimizer"}

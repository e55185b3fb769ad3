"""PA-RL with IQL value functions (``algorithms.parl``, ``qfunction``, ``transitions``): the
maths on hand-computed cases, the replay's bookkeeping, the learning direction on a toy
bandit, and the algorithm inside the real learner (checkpoint, resume, CLI flags)."""

import numpy as np
import pytest
import torch

from tests.cloud.test_learner import TINY, TokenRewards, config, fill_store
from vlac.cloud.learner.algorithms import Context, ParlConfig, UpdateBatch, make_algorithm
from vlac.cloud.learner.algorithms.parl import (
    candidate_advantages,
    rank_candidates,
    token_kl,
)
from vlac.cloud.learner.algorithms.qfunction import (
    expectile_loss,
    iql_q_loss,
    polyak,
    pool_features,
    td_targets,
    tokens_to_unit,
    unpool_features,
)
from vlac.cloud.learner.algorithms.transitions import Replay, TransitionBuffer, episode_transitions
from vlac.cloud.learner.config import LearnerConfig
from vlac.cloud.learner.episodes import EpisodeData
from vlac.cloud.learner.process import Learner
from vlac.cloud.learner.replay import StepPool
from vlac.cloud.models import engine as eng
from vlac.cloud.models.encoders import ImageEncoder, TextEncoder
from vlac.cloud.models.vlac import SmallVLAC
from vlac.infra.cli import main as cli
from vlac.shared.config import ConfigError
from vlac.shared.hitl import BCConfig

pytestmark = pytest.mark.filterwarnings("ignore")


def episode(n, *, rewards=None, terminal=False, intervention=None, seed=0, tokens=None):
    rng = np.random.default_rng(seed)
    return EpisodeData(
        key=f"r/ep-{seed}", success=terminal, text=rng.normal(size=384).astype(np.float32),
        feat=rng.normal(size=(n, 16, 1280)).astype(np.float16),
        proprio=rng.normal(size=(n, 4)).astype(np.float32),
        tokens=rng.integers(0, 256, (n, 4)) if tokens is None else tokens,
        logprob=np.zeros(n, np.float32), policy_version=np.zeros(n, np.int64),
        intervention=np.zeros(n, bool) if intervention is None else np.asarray(intervention),
        rewards=np.zeros(n - 1 if not terminal else n, np.float32) if rewards is None
        else np.asarray(rewards, np.float32), terminal=terminal, task="t")


# ---------------------------------------------------------------------- the maths
def test_expectile_loss_by_hand():
    # diff 1 (Q above V) weighs tau = 0.7, diff -2 weighs 0.3: (0.7 * 1 + 0.3 * 4) / 2
    assert expectile_loss(torch.tensor([1.0, -2.0]), 0.7).item() == pytest.approx(0.95)
    assert expectile_loss(torch.tensor([1.0, -2.0]), 0.5).item() == pytest.approx(1.25)


def test_td_targets_stop_at_the_end_and_q_loss_sums_the_members():
    t = td_targets(torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]),
                   0.9)
    assert t.tolist() == pytest.approx([1 + 0.9 * 2, 0.5])
    # members' mean squared errors: ((1-2)^2 + (0-1)^2)/2 = 1 and ((2-2)^2 + (3-1)^2)/2 = 2
    q = torch.tensor([[1.0, 0.0], [2.0, 3.0]])
    assert iql_q_loss(q, torch.tensor([2.0, 1.0])).item() == pytest.approx(3.0)


def test_polyak_moves_the_target_by_tau():
    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    for p, v in zip((*a.parameters(), *b.parameters()), (0.0, 0.0, 1.0, 1.0), strict=True):
        torch.nn.init.constant_(p, v)
    polyak(a, b, 0.25)
    assert [p.item() for p in a.parameters()] == [0.25, 0.25]


def test_tokens_map_to_their_bin_centres():
    assert tokens_to_unit(torch.tensor([[0, 255, 51]]), 256).tolist()[0] == pytest.approx(
        [-1.0, 1.0, 51 / 255 * 2 - 1])


def test_pooled_features_give_the_policy_exactly_its_own_image_tokens():
    feat = np.random.default_rng(0).normal(size=(3, 16, 1280)).astype(np.float16)
    model = SmallVLAC(TINY)
    pooled = pool_features(feat, model.cfg.image_grid)
    assert pooled.shape == (3, 4, 1280) and pooled.dtype == np.float16
    # cell 0 is the mean of positions 0, 1, 4, 5 of the 4x4 map
    want = feat[:, [0, 1, 4, 5]].astype(np.float32).mean(1)
    np.testing.assert_allclose(pooled[:, 0].astype(np.float32), want, atol=1e-2)
    full = model.image_tokens(torch.from_numpy(feat.astype(np.float32)))
    again = model.image_tokens(unpool_features(torch.from_numpy(pooled.astype(np.float32)), 2))
    torch.testing.assert_close(again, full, atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="cannot be pooled to a 3x3 grid"):
        pool_features(feat, 3)


def table_q(text, pooled, proprio, action):
    """Two 'Q members' that score an action by its first unit value u: u, and 1 - u/2."""
    return torch.stack([action[:, 0], 1 - action[:, 0] * 0.5])


def test_ranking_keeps_the_candidate_the_pessimistic_q_scores_best():
    cands = torch.tensor([[[0, 0, 0, 0], [255, 1, 1, 1], [128, 2, 2, 2]]])
    best, scores, members = rank_candidates(table_q, torch.zeros(1, 384),
                                            torch.zeros(1, 4, 1280), torch.zeros(1, 4), cands, 256)
    assert members.shape == (2, 1, 3)
    # unit values of token 0: -1, 1, 0.0039; min(u, 1 - u/2): -1, 0.5, 0.0039
    assert scores[0].tolist() == pytest.approx([-1.0, 0.5, 128 / 255 * 2 - 1], abs=1e-6)
    assert best.tolist() == [[255, 1, 1, 1]]


def test_candidate_advantages_by_hand_and_zero_when_q_cannot_tell():
    # state 0: the members agree (scores 1, 3): centred -1, +1, disagreement 0 -> -1, +1
    # state 1: members [0, 2] and [0, 0]: min [0, 0] -> 0, 0 (no preference)
    # state 2: members [0, 2] and [0, 1]: min [0, 1], centred -0.5, 0.5; the members' centred
    # scores [-1, 1] and [-0.5, 0.5] differ by 0.5 on each -> 0.5 / (0.5 + 0.5)
    members = torch.tensor([[[1.0, 3.0], [0.0, 2.0], [0.0, 2.0]],
                            [[1.0, 3.0], [0.0, 0.0], [0.0, 1.0]]])
    adv = candidate_advantages(members.min(0).values, members)
    assert adv.flatten().tolist() == pytest.approx([-1, 1, 0, 0, -0.5, 0.5], abs=1e-6)
    flat = torch.full((2, 3, 5), 0.7)
    assert candidate_advantages(flat[0], flat).abs().max().item() == 0.0


def test_token_kl_by_hand():
    # KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 ln 2 + 0.5 ln(2/3)
    a = torch.log(torch.tensor([[[0.5, 0.5]]]))
    b = torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert token_kl(a, b).item() == pytest.approx(0.5 * np.log(2) + 0.5 * np.log(2 / 3))
    assert token_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)


def policy_drift(improve: str) -> float:
    """Largest change of any token log-probability after one update whose Q-function scores
    every action 0."""
    torch.manual_seed(0)
    model = SmallVLAC(TINY)
    cfg = ParlConfig(improve=improve, critic_steps=1, critic_warmup_steps=0, policy_steps=20,
                     lr=3e-4, critic_batch=16, policy_batch=16, target_kl=0.0)
    algo = make_algorithm(cfg, model, Context(bc=BCConfig(coef=0.0), seed=0, world=1,
                                              make_engine=eng.make_engine))
    for p in algo.vf_engine.module.q_heads.parameters():  # Q = 0 for every action, for good
        torch.nn.init.zeros_(p)
        p.requires_grad_(False)
    ep = episode(20, seed=3)
    args = (torch.from_numpy(np.repeat(ep.text[None], 20, 0)),
            torch.from_numpy(ep.feat.astype(np.float32)), torch.from_numpy(ep.proprio),
            torch.from_numpy(ep.tokens))
    with torch.no_grad():
        before = model.actor_forward(*args)[0].log_softmax(-1)
    stats = algo.update(UpdateBatch([ep], StepPool([]), 0))
    assert stats["policy_steps"] == 20 and stats["q_gain"] == 0.0
    with torch.no_grad():
        return (model.actor_forward(*args)[0].log_softmax(-1) - before).abs().max().item()


def test_an_uninformative_q_leaves_the_policy_where_it_is_and_cloning_samples_does_not():
    # the weighted step's improvement loss is exactly 0: what moves is AdamW's weight decay
    # and Adam's step on the KL term's rounding-level gradients (0.026 here), against 0.29
    # for cloning the policy's own samples
    still, cloned = policy_drift("weighted"), policy_drift("rank")
    assert still < 0.05 and cloned > 5 * still, (still, cloned)


# ---------------------------------------------------------------------- the replay
def test_transitions_of_terminal_and_cut_episodes():
    cut = episode_transitions(episode(4, rewards=[0.1, 0.2, 0.3]), 2)
    assert cut["reward"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert cut["done"].tolist() == [0, 0, 0]  # bootstraps from step 3, never a start itself
    np.testing.assert_array_equal(cut["next_pooled"], pool_features(episode(4).feat, 2)[1:])
    ended = episode_transitions(episode(3, rewards=[0, 0, 1], terminal=True), 2)
    assert ended["done"].tolist() == [0, 0, 1] and len(ended["reward"]) == 3


def test_replay_routes_takeovers_to_the_human_buffer_and_samples_half_from_each():
    replay = Replay(100, 2)
    replay.add_episode(episode(6, intervention=[0, 0, 1, 1, 0, 0]))
    assert (len(replay.human), len(replay.online)) == (2, 3)  # 5 used steps
    replay.add_episode(episode(5, rewards=[1] * 5, terminal=True, seed=1), human=True)
    assert (len(replay.human), len(replay.online)) == (7, 3)
    b = replay.sample(np.random.default_rng(0), 10)
    assert b["reward"].shape == (10,) and b["pooled"].shape == (10, 4, 1280)
    assert b["tokens"].dtype == torch.int64


def test_a_full_buffer_drops_its_oldest_half():
    buf = TransitionBuffer(10)
    for i in range(3):
        rows = episode_transitions(episode(5, rewards=[i] * 4, seed=i), 2)
        buf.add({k: v for k, v in rows.items() if k != "human"})
    # 4 + 4 = 8; the third add drops max(4, 8 + 4 - 10) = 4: episodes 1 and 2 remain
    assert len(buf) == 8 and buf.cols["reward"][:8].tolist() == [1] * 4 + [2] * 4


# ---------------------------------------------------------------------- learning direction
def bandit_batch(policy, rng, version, n=48):
    """One state; reward 1 where the sampled token 0 is in the upper half of the bins."""
    text = torch.zeros(1, 384)
    feat = torch.zeros(1, 16, 1280)
    proprio = torch.zeros(1, 4)
    g = torch.from_numpy(rng.gumbel(size=(n, 4, 256)).astype(np.float32))
    with torch.no_grad():
        tokens, _, _ = policy.act(text.expand(n, -1), feat.expand(n, -1, -1),
                                  proprio.expand(n, -1), g, torch.ones(n))
    tokens = tokens.numpy()
    ep = EpisodeData(key=f"b/{version}", success=False, text=np.zeros(384, np.float32),
                     feat=np.zeros((n, 16, 1280), np.float16), proprio=np.zeros((n, 4), np.float32),
                     tokens=tokens, logprob=np.zeros(n, np.float32),
                     policy_version=np.zeros(n, np.int64), intervention=np.zeros(n, bool),
                     rewards=(tokens[:, 0] >= 128).astype(np.float32), terminal=False, task="b")
    return ep, float((tokens[:, 0] >= 128).mean())


def test_parl_moves_a_token_policy_toward_what_its_q_function_learnt_pays():
    torch.manual_seed(0)
    model = SmallVLAC(TINY)
    cfg = ParlConfig(gamma=0.0, critic_steps=60, critic_warmup_steps=100, policy_steps=15,
                     critic_batch=64, policy_batch=32, lr=3e-3, critic_lr=3e-3, target_kl=0.0)
    algo = make_algorithm(cfg, model, Context(bc=BCConfig(coef=0.0), seed=0, world=1,
                                              make_engine=eng.make_engine))
    rng = np.random.default_rng(1)
    rates = []
    for v in range(6):
        ep, rate = bandit_batch(model, rng, v)
        rates.append(rate)
        stats = algo.update(UpdateBatch([ep], StepPool([]), v))
        assert stats["learned"] and stats["policy_steps"] == 15
    assert stats["q_gain"] > 0
    _, final = bandit_batch(model, rng, 99, n=400)
    assert rates[0] < 0.7 and final > 0.9, (rates, final)


# ---------------------------------------------------------------------- in the learner
def parl_config(tmp_path, **kw):
    base = config(tmp_path, **kw)
    base.algorithm = ParlConfig(critic_steps=5, critic_warmup_steps=5, policy_steps=3,
                                critic_batch=16, policy_batch=8, candidates=2)
    return base


def test_the_learner_runs_parl_and_resumes_its_value_functions(tmp_path):
    img, txt = ImageEncoder(), TextEncoder()
    fill_store(tmp_path)
    cfg = parl_config(tmp_path, checkpoint_every=1)
    first = Learner(cfg, TokenRewards(), image_encoder=img, text_encoder=txt)
    before = {k: v.clone() for k, v in first.algorithm.policy.state_dict().items()}
    assert first.run()["version"] == 2
    log = first.log
    assert log[0]["critic_steps"] == 10 and log[1]["critic_steps"] == 5  # the warm-up once
    assert log[0]["replay_human"] == 3 + 8  # the takeover steps and the demo's 8
    assert any(not torch.equal(v, first.algorithm.policy.state_dict()[k])
               for k, v in before.items())
    again = Learner(parl_config(tmp_path, out=tmp_path / "out2"), TokenRewards(),
                    image_encoder=img, text_encoder=txt)
    assert again.version == 2 and again.algorithm.critic_updates == 15
    for k, v in first.algorithm.vf_engine.module.state_dict().items():
        torch.testing.assert_close(again.algorithm.vf_engine.module.state_dict()[k], v)


def test_the_cli_and_yaml_choose_the_algorithm_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli(["learner", "run", "--algorithm.name", "parl", "-h"])
    helptext = capsys.readouterr().out
    assert "--algorithm.critic-steps" in helptext and "--algorithm.clip" not in helptext
    with pytest.raises(SystemExit):
        cli(["learner", "run", "-h"])
    assert "--algorithm.clip" in capsys.readouterr().out  # PPO's, the default
    yaml = tmp_path / "learner.yaml"
    yaml.write_text("algorithm:\n  name: parl\n  candidates: 3\n")
    with pytest.raises(SystemExit):
        cli(["learner", "run", "--config", str(yaml), "-h"])
    assert "--algorithm.candidates" in capsys.readouterr().out
    cfg = LearnerConfig(algorithm={"name": "parl", "improve": "awr", "critic_steps": 7})
    assert isinstance(cfg.algorithm, ParlConfig) and cfg.algorithm.critic_steps == 7
    with pytest.raises(ConfigError, match=r"unknown field.*'clip'"):
        LearnerConfig(algorithm={"name": "parl", "clip": 0.2})  # a PPO field

"""The learner process (`vlac.cloud.learner.process`) with PPO on real parts: a tiny actor,
real encoders, a real episode store, the DeepSpeed engine (one process, and two processes over
gloo), a local object store. The PPO maths, the rewards, the config and the algorithm registry
have their own files in tests/cloud/learner/."""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import free_port
from vlac.cloud.actor.model import TorchActor
from vlac.cloud.critic.model import SmallVLACCritic
from vlac.cloud.learner.algorithms.ppo import PPOConfig
from vlac.cloud.learner.config import BCConfig, LearnerConfig, PublishConfig, RewardsConfig
from vlac.cloud.learner.process import Learner
from vlac.cloud.models.encoders import ImageEncoder, TextEncoder
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig
from vlac.cloud.store.episodes import EpisodeStore
from vlac.infra.cli import main as cli
from vlac.shared.config import ConfigError
from vlac.shared.episode import StepColumns
from vlac.shared.objstore import open_store
from vlac.shared.tokenizer import ActionTokenizer

pytestmark = pytest.mark.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[2]
TASK = "press the button"
TINY = VLACConfig(d_model=32, layers=1, heads=2, ff=64, dropout=0.0)


@pytest.fixture(scope="module")
def encoders():
    return ImageEncoder(), TextEncoder()


def tiny_actor(path, seed=0):
    torch.manual_seed(seed)
    TorchActor(SmallVLAC(TINY), camera="corner").save(path)
    return path


def make_steps(n, *, intervention=None, version=0, seed=0):
    """32x32 frames; frame t+1 shows action token 0 of step t in a corner (what the scripted
    critic below rewards)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, (n, 4))
    frames = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    frames[1:, :4, :4] = tokens[:-1, 0, None, None, None].astype(np.uint8)
    interv = np.zeros(n, bool) if intervention is None else np.asarray(intervention, bool)
    return StepColumns(
        images={"corner": frames}, proprio=rng.normal(size=(n, 4)).astype(np.float32),
        action=ActionTokenizer([-1] * 4, [1] * 4).decode(tokens),
        action_tokens=tokens.astype(np.int32),
        logprob=np.where(interv, 0, -4 * np.log(256)).astype(np.float32),
        policy_version=np.full(n, version, np.int64), intervention=interv,
        timestamp=np.arange(n, dtype=np.float64))


def write_episode(store, robot, ep, n, *, success=False, source="policy", **kw):
    steps = make_steps(n, **kw)
    store.write_episode(robot, ep, TASK, steps, success, source=source, task_id="button-v3")
    return steps


class TokenRewards:
    """A scripted critic: progress +0.5 when the next frame shows a high token 0 (and with
    ``from_first`` the progress summed since the first frame)."""

    def episode_rewards(self, task, frames, stride=1, reference=None, from_first=False):
        high = frames[1:, 0, 0, 0] >= 128
        delta = np.where(high, 0.5, -0.5).astype(np.float32)
        return np.cumsum(delta) if from_first else delta, np.zeros(len(high), np.float32)


# A light behaviour-cloning term (the shared defaults add 100 BC-only steps per update and keep
# 200 episodes' takeovers, which these tests switch on where they test them)
LIGHT_BC = {"batch_size": 8, "coef": 0.1, "steps": 0, "takeover_replay": 0}


def config(tmp_path, *, rewards=None, algorithm=None, bc=None, publish=None, **kw):
    """A small learner under ``tmp_path``: top-level fields as keywords, each section's
    overrides as a dict (``algorithm={"clip": 0.1}``)."""
    base = dict(store_root=tmp_path / "store", init=tmp_path / "init.pt", out=tmp_path / "out",
                features=tmp_path / "features", object_store=str(tmp_path / "objects"),
                episodes_per_update=2, once=True, threads=1)
    return LearnerConfig(
        **{**base, **kw}, rewards=RewardsConfig(**(rewards or {})),
        algorithm=PPOConfig(**{"epochs": 2, "minibatch_size": 16, "lr": 1e-3,
                               **(algorithm or {})}),
        bc=BCConfig(**{**LIGHT_BC, **(bc or {})}), publish=PublishConfig(**(publish or {})))


def fill_store(tmp_path):
    """An init actor and a store of 4 fleet episodes (ep-1 with 3 takeover steps) and one
    8-step demonstration."""
    tiny_actor(tmp_path / "init.pt")
    store = EpisodeStore(tmp_path / "store", fsync=False)
    for i in range(4):
        write_episode(store, "robot-0", f"ep-{i}", 10, success=i % 2 == 0, seed=i,
                      intervention=[j < 3 for j in range(10)] if i == 1 else None)
    write_episode(store, "operator", "demo-0", 8, success=True, source="demo", seed=9)
    return store


def test_run_checkpoints_publishes_and_resumes_without_reconsuming(tmp_path, encoders):
    img, txt = encoders
    store = fill_store(tmp_path)
    published = []
    cfg = config(tmp_path, checkpoint_every=1, keep_checkpoints=1)
    learner = Learner(cfg, TokenRewards(), lambda a, v: published.append((type(a), v)),
                      image_encoder=img, text_encoder=txt)
    first = learner.run()
    assert first["updates"] == 2 and first["version"] == 2 and first["episodes"] == 4
    assert published == [(TorchActor, 1), (TorchActor, 2)]
    log = json.loads((cfg.out / "learner_log.json").read_text())["log"]
    assert all(r["bc_samples"] >= 8 and r["ppo_samples"] > 0 for r in log)  # demo + takeovers
    assert list((cfg.out / "tb").glob("events.out.tfevents.*"))
    assert (cfg.out / "learner_curves.png").stat().st_size > 10_000
    objects = open_store(tmp_path / "objects")
    assert objects.get_bytes("learner/checkpoints/latest") == b"step2"
    keys = objects.list("learner/checkpoints/")
    assert "learner/checkpoints/step2/actor.pt" in keys
    assert not [k for k in keys if "/step1/" in k]  # keep_checkpoints=1 pruned it
    assert TorchActor.load(cfg.out / "actor.pt").version == 2

    # two more episodes arrive; a fresh output folder resumes from the object store alone
    write_episode(store, "robot-1", "ep-4", 10, seed=4, version=2)
    write_episode(store, "robot-1", "ep-5", 10, seed=5, version=1)
    cfg2 = config(tmp_path, out=tmp_path / "out2")
    again = Learner(cfg2, TokenRewards(), image_encoder=img, text_encoder=txt)
    assert again.version == 2 and len(again.consumed) == 4
    assert again.algorithm.updates == 2  # PPO's own state (state_dict) came back too
    assert len(again.algorithm.engine.optimizer.state) > 0  # AdamW moments came back too
    torch.testing.assert_close(again.algorithm.policy.state_dict(),
                               learner.algorithm.policy.state_dict())
    second = again.run()
    assert second["updates"] == 1 and second["episodes"] == 2 and second["version"] == 3
    third = Learner(cfg2, TokenRewards(), image_encoder=img, text_encoder=txt).run()
    assert third["updates"] == 0 and third["version"] == 3 and third["consumed_total"] == 6


def test_consumes_episodes_as_they_arrive_and_stops_when_idle_or_told(tmp_path, encoders):
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt")
    store = EpisodeStore(tmp_path / "store", fsync=False)
    learner = Learner(config(tmp_path, once=False, idle_timeout_s=1.0, poll_s=0.05),
                      TokenRewards(), image_encoder=img, text_encoder=txt)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(learner.run()))
    thread.start()
    for i in range(3):  # arrive while the learner waits; the third stays pending (1 < 2)
        time.sleep(0.2)  # (one success: episodes that tie carry no signal, see below)
        write_episode(store, "robot-0", f"ep-{i}", 8, seed=i, success=i == 0)
    thread.join(30)
    assert not thread.is_alive()
    assert result["updates"] == 1 and result["episodes"] == 2
    assert learner.consumed == {"robot-0/ep-0", "robot-0/ep-1"}
    waiting = Learner(config(tmp_path, once=False, poll_s=0.05), TokenRewards(),
                      image_encoder=img, text_encoder=txt)  # no idle timeout: waits for ever
    thread = threading.Thread(target=lambda: result.update(waiting.run()))
    thread.start()
    time.sleep(0.3)
    waiting.stop()
    thread.join(10)
    assert not thread.is_alive() and result["updates"] == 0 and result["version"] == 1


def _prob_high(learner, episodes):
    """Mean probability of token 0 >= 128, and mean log-prob of the rewarded tokens."""
    model = learner.algorithm.policy
    probs, logps = [], []
    with torch.no_grad():
        for ep in episodes:
            t = torch.from_numpy
            text = t(np.repeat(ep.text[None], len(ep), 0))
            logits, _ = model.actor_forward(text, t(ep.feat.astype(np.float32)),
                                            t(ep.proprio), t(ep.tokens))
            probs.append(logits[:, 0].softmax(-1)[:, 128:].sum(-1).numpy())
            logp, _, _ = model.action_logprobs(text, t(ep.feat.astype(np.float32)),
                                               t(ep.proprio), t(ep.tokens))
            logps.append(logp.numpy()[ep.tokens[:, 0] >= 128])
    return float(np.concatenate(probs).mean()), float(np.concatenate(logps).mean())


@pytest.mark.parametrize("advantage,sigma", [("gae", 0.0), ("horizon", 0.0), ("gae", 3.0)])
def test_ppo_raises_the_probability_of_rewarded_tokens(tmp_path, encoders, advantage, sigma):
    """Per-step credit: GAE with gamma 0, or the next step's reward (horizon 1); and GAE
    crediting a bump (std 3 bins) around each token."""
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt", seed=1)
    store = EpisodeStore(tmp_path / "store", fsync=False)
    cfg = config(tmp_path, episodes_per_update=4, max_updates=1,
                 algorithm=dict(epochs=4, minibatch_size=32, lr=3e-3, gamma=0.0,
                                target_kl=0.0, advantage=advantage, horizon=1,
                                token_sigma=sigma),
                 bc=dict(coef=0.0), rewards=dict(pairs="consecutive"))
    learner = Learner(cfg, TokenRewards(), image_encoder=img, text_encoder=txt)
    for i in range(4):
        write_episode(store, "robot-0", f"probe-{i}", 24, seed=100 + i)
    probe = [learner.load_episode(e) for e in learner.poll()]
    learner.consumed.update(e.key for e in probe)
    before = _prob_high(learner, probe)
    for u in range(3):
        for i in range(4):  # behaviour log-probs: the current policy's
            steps = make_steps(24, seed=10 * u + i, version=learner.version)
            with torch.no_grad():
                logp, _, _ = learner.algorithm.policy.action_logprobs(
                    torch.from_numpy(np.repeat(txt.encode([TASK]), 24, 0)),
                    torch.from_numpy(img.encode(steps.images["corner"]).astype(np.float32)),
                    torch.from_numpy(steps.proprio),
                    torch.from_numpy(steps.action_tokens.astype(np.int64)))
            steps.logprob = logp.numpy()
            store.write_episode("robot-0", f"ep-{u}-{i}", TASK, steps, False)
        stats = learner.update(learner.poll())
        assert stats["ppo_samples"] == 4 * 23 and 0.99 < stats["mean_weight"] <= 1.0
    after = _prob_high(learner, probe)
    assert learner.version == 3
    assert after[0] > before[0] + 0.05, (before, after)  # P(token 0 high) went up
    assert after[1] > before[1], (before, after)  # and the rewarded tokens' log-prob


def _probe_episodes(learner, store):
    """Two episodes written and consumed up front, to measure the policy on."""
    for i in range(2):
        write_episode(store, "robot-0", f"probe-{i}", 24, seed=200 + i)
    probe = [learner.load_episode(e) for e in learner.poll()]
    learner.consumed.update(e.key for e in probe)
    return probe


def _write_rewarded_batch(learner, store, u):
    """Four episodes: the two successful ones chose a high token 0, the others a low one."""
    for i in range(4):
        steps = make_steps(24, seed=30 * u + i, version=learner.version)
        good = i < 2
        steps.action_tokens[:, 0] = (steps.action_tokens[:, 0] % 128) + (128 if good else 0)
        store.write_episode("robot-0", f"ep-{u}-{i}", TASK, steps, good, task_id="button-v3")


def test_group_advantages_favour_the_successful_episodes(tmp_path, encoders):
    """Sparse success reward, episode-level advantages: the token successful episodes chose
    (token 0 high) becomes more likely, with no value function involved."""
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt", seed=2)
    store = EpisodeStore(tmp_path / "store", fsync=False)
    cfg = config(tmp_path, episodes_per_update=4, rewards=dict(mode="sparse"),
                 algorithm=dict(epochs=4, minibatch_size=32, lr=3e-3, target_kl=0.0,
                                vf_coef=0.0), bc=dict(coef=0.0))
    learner = Learner(cfg, image_encoder=img, text_encoder=txt)
    probe = _probe_episodes(learner, store)
    before = _prob_high(learner, probe)[0]
    for u in range(3):
        _write_rewarded_batch(learner, store, u)
        stats = learner.update(learner.poll())
        assert stats["ppo_samples"] == 2 * 24 + 2 * 23  # success keeps its last step
    after = _prob_high(learner, probe)[0]
    assert after > before + 0.1, (before, after)
    # a batch where every episode ties with its group (all failed) must not move the policy:
    # no value loss, no optimizer step, no new version
    w = {k: v.clone() for k, v in learner.algorithm.policy.state_dict().items()}
    for i in range(4):
        write_episode(store, "robot-0", f"fail-{i}", 24, seed=90 + i, version=learner.version)
    stats = learner.update(learner.poll())
    assert not stats["learned"] and stats["version"] == 3
    assert all(torch.equal(w[k], v) for k, v in learner.algorithm.policy.state_dict().items())


def test_kl_to_the_init_policy_holds_the_policy_back(tmp_path, encoders):
    """The same rewarded batches move P(token 0 high) less with the KL term to the --init
    policy, whose frozen copy the updates never touch."""
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt", seed=2)
    gains = {}
    for coef in (0.0, 5.0):
        root = tmp_path / f"kl{coef}"
        store = EpisodeStore(root / "store", fsync=False)
        cfg = config(root, episodes_per_update=4, init=tmp_path / "init.pt",
                     rewards=dict(mode="sparse"), bc=dict(coef=0.0),
                     algorithm=dict(epochs=4, minibatch_size=32, lr=3e-3, target_kl=0.0,
                                    kl_ref_coef=coef))
        learner = Learner(cfg, image_encoder=img, text_encoder=txt)
        reference = learner.algorithm.reference
        ref0 = None if reference is None else \
            {k: v.clone() for k, v in reference.state_dict().items()}
        probe = _probe_episodes(learner, store)
        before = _prob_high(learner, probe)[0]
        for u in range(2):
            _write_rewarded_batch(learner, store, u)
            stats = learner.update(learner.poll())
            assert np.isnan(stats["kl_ref"]) == (coef == 0)
        gains[coef] = _prob_high(learner, probe)[0] - before
        if ref0 is not None:
            assert stats["kl_ref"] > 0
            assert all(torch.equal(ref0[k], v) for k, v in reference.state_dict().items())
    assert gains[0.0] > 0.05 and abs(gains[5.0]) < 0.5 * gains[0.0], gains


def test_success_replay_clones_the_last_successes(tmp_path, encoders):
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt")
    with pytest.raises(ConfigError, match=r"`bc.success_replay`.*--bc\.coef"):
        config(tmp_path, bc=dict(success_replay=2, coef=0.0))
    store = EpisodeStore(tmp_path / "store", fsync=False)
    cfg = config(tmp_path, rewards=dict(mode="sparse"),
                 bc=dict(success_replay=1, coef=0.5, demo_episodes=0))
    learner = Learner(cfg, image_encoder=img, text_encoder=txt)
    write_episode(store, "robot-0", "win", 10, success=True, seed=1,
                  intervention=[j < 3 for j in range(10)])
    write_episode(store, "robot-0", "fail", 10, seed=2)
    stats = learner.update(learner.poll())
    assert stats["bc_samples"] == 3 + 7  # its 3 takeover steps, and its 7 policy steps
    write_episode(store, "robot-0", "win-2", 12, success=True, seed=3, version=1)
    write_episode(store, "robot-0", "fail-2", 12, seed=4, version=1)
    assert learner.update(learner.poll())["bc_samples"] == 12  # only the latest success


def test_takeover_replay_keeps_the_last_episodes_takeovers(tmp_path, encoders):
    """HG-DAgger's aggregation: takeovers of earlier updates stay in the BC pool, up to the
    last ``bc.takeover_replay`` episodes that had one; without it only this update's count."""
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt")
    with pytest.raises(ConfigError, match=r"`bc\.takeover_replay`"):
        config(tmp_path, bc=dict(takeover_replay=-1))
    counts = {}
    for keep in (0, 2):
        root = tmp_path / f"keep{keep}"
        store = EpisodeStore(root / "store", fsync=False)
        learner = Learner(config(root, init=tmp_path / "init.pt", rewards=dict(mode="sparse"),
                                 bc=dict(takeover_replay=keep, coef=0.5, demo_episodes=0)),
                          image_encoder=img, text_encoder=txt)
        got = []
        for u, taken in enumerate((3, 0, 5, 4)):  # takeover steps of each update's episode
            write_episode(store, "robot-0", f"ep-{u}", 10, seed=u, version=learner.version,
                          intervention=np.arange(10) < taken)
            write_episode(store, "robot-0", f"plain-{u}", 10, seed=50 + u,
                          version=learner.version)
            got.append(learner.update(learner.poll())["bc_samples"])
        counts[keep] = got
    assert counts[0] == [3, 0, 5, 4]
    assert counts[2] == [3, 3, 3 + 5, 5 + 4]  # an episode without takeovers takes no slot


def test_bc_steps_clone_takeovers_at_their_own_learning_rate(tmp_path, encoders):
    """With PPO's small learning rate the BC term barely moves the policy; ``bc.steps``
    extra BC-only steps at ``bc.lr`` make it take the operator's tokens, then the engine is
    back at PPO's rate."""
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt", seed=2)
    with pytest.raises(ConfigError, match=r"`bc.steps`.*--bc\.coef"):
        config(tmp_path, bc=dict(steps=5, coef=0.0))
    gains = {}
    for steps in (0, 30):
        root = tmp_path / f"bc{steps}"
        store = EpisodeStore(root / "store", fsync=False)
        learner = Learner(config(root, init=tmp_path / "init.pt", rewards=dict(mode="sparse"),
                                 algorithm=dict(lr=1e-5),
                                 bc=dict(coef=1.0, steps=steps, lr=3e-3, demo_episodes=0)),
                          image_encoder=img, text_encoder=txt)
        for i in range(2):  # the operator always chose a high token 0
            s = make_steps(16, seed=70 + i, intervention=np.ones(16))
            s.action_tokens[:, 0] = s.action_tokens[:, 0] % 128 + 128
            store.write_episode("robot-0", f"taken-{i}", TASK, s, True, task_id="button-v3")
        episodes = [learner.load_episode(e) for e in learner.poll()]
        before = _prob_high(learner, episodes)[0]
        stats = learner.update(learner.poll())
        gains[steps] = _prob_high(learner, episodes)[0] - before
        assert np.isnan(stats["bc_only_loss"]) == (steps == 0)
        assert all(g["lr"] == 1e-5 for g in learner.algorithm.engine.optimizer.param_groups)
    assert gains[30] > 0.2 and gains[30] > 5 * max(gains[0], 0.01), gains


def test_takeover_steps_are_never_ppo_samples(tmp_path, encoders):
    img, txt = encoders
    tiny_actor(tmp_path / "init.pt")
    store = EpisodeStore(tmp_path / "store", fsync=False)
    cfg = config(tmp_path, episodes_per_update=1, bc=dict(demo_episodes=0, coef=1.0),
                 algorithm=dict(max_version_lag=0, advantage="gae"))
    learner = Learner(cfg, TokenRewards(), image_encoder=img, text_encoder=txt)
    w0 = {k: v.clone() for k, v in learner.algorithm.policy.state_dict().items()}
    write_episode(store, "robot-0", "all-operator", 12, intervention=np.ones(12), seed=3)
    stats = learner.update(learner.poll())
    assert stats["ppo_samples"] == 0 and stats["bc_samples"] == 12
    assert np.isnan(stats["pg_loss"]) and np.isfinite(stats["bc_loss"])
    assert stats["version"] == 1  # the BC term alone still trained the policy
    assert any(not torch.equal(w0[k], v)
               for k, v in learner.algorithm.policy.state_dict().items())
    # mixed: 5 takeovers among 12 steps; 11 steps have a reward (no success: bootstrap)
    write_episode(store, "robot-0", "mixed", 12, intervention=np.arange(12) % 2 == 0, seed=4,
                  version=1)
    learner.cfg.algorithm.epochs, learner.cfg.algorithm.target_kl = 4, 1e-9
    stats = learner.update(learner.poll())
    assert stats["ppo_samples"] == 5 and stats["bc_samples"] == 6  # steps 1,3,..,9 in PPO
    assert stats["epochs"] == 2  # epoch 1 starts at the anchor (KL 0); epoch 2 overshoots
    # stale steps (lag > max_version_lag) are dropped too
    write_episode(store, "robot-0", "stale", 12, seed=5, version=0)  # lag 2 > 0
    stats = learner.update(learner.poll())
    assert stats["ppo_samples"] == 0 and stats["stale_fraction"] == 1.0
    assert stats["version"] == 2  # nothing to learn from: same version, episode consumed
    assert "robot-0/stale" in learner.consumed
    # group advantages: only the steps before the first takeover are PPO samples (the
    # operator's rescue must not credit the policy); takeovers still feed BC
    learner.cfg.algorithm.advantage = "group"
    write_episode(store, "robot-0", "rescued", 12, intervention=np.arange(12) >= 6, seed=6,
                  version=learner.version)
    stats = learner.update(learner.poll())
    assert stats["ppo_samples"] == 6 and stats["bc_samples"] == 6


def test_cli_runs_once_with_an_in_process_critic(tmp_path):
    tiny_actor(tmp_path / "init.pt")
    torch.manual_seed(0)
    SmallVLACCritic(SmallVLAC(TINY)).save(tmp_path / "critic.pt")
    store = EpisodeStore(tmp_path / "store", fsync=False)
    for i in range(3):
        write_episode(store, "robot-0", f"ep-{i}", 6, success=i == 0, seed=i)
    args = ["learner", "run", "--store-root", str(tmp_path / "store"), "--init",
            str(tmp_path / "init.pt"), "--out", str(tmp_path / "out"), "--rewards.critic",
            str(tmp_path / "critic.pt"), "--once", "--episodes-per-update", "2",
            "--algorithm.epochs", "1", "--threads", "1", "--features", str(tmp_path / "features")]
    assert cli(args) == 0
    summary = json.loads((tmp_path / "out" / "learner_log.json").read_text())
    # 2 episodes, then the remaining 1: alone in its batch it has nothing to be compared
    # with (group advantages), so it is consumed without a new version
    assert summary["updates"] == 2 and summary["version"] == 1
    assert [r["learned"] for r in summary["log"]] == [True, False]
    assert (tmp_path / "out" / "objects" / "learner" / "checkpoints" / "latest").exists()


RANK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    root, repo = Path(sys.argv[1]), sys.argv[2]
    sys.path.insert(0, repo)
    from tests.cloud.test_learner import TokenRewards
    from vlac.cloud.learner.algorithms.ppo import PPOConfig
    from vlac.cloud.learner.config import BCConfig, LearnerConfig
    from vlac.cloud.learner.process import Learner

    calls = []

    class CountingRewards(TokenRewards):
        def episode_rewards(self, *args, **kw):
            calls.append(1)
            return super().episode_rewards(*args, **kw)

    cfg = LearnerConfig(store_root=root / "store", init=root / "init.pt", out=root / "out",
                        features=root / "features", once=True, max_updates=1,
                        episodes_per_update=2, checkpoint_every=1, threads=1,
                        algorithm=PPOConfig(epochs=1, minibatch_size=8, lr=1e-2),
                        bc=BCConfig(batch_size=4, coef=0.1, steps=0, takeover_replay=0))
    learner = Learner(cfg, CountingRewards())
    assert learner.world == 2, learner.world
    summary = learner.run()
    assert summary["version"] == 1, summary
    assert len(calls) == (2 if learner.rank == 0 else 0), calls  # rank 0 asks the critic
    torch.save(learner.algorithm.policy.state_dict(), root / f"rank{learner.rank}.pt")
    learner.close()  # barrier and process-group teardown: a clean exit code on both ranks
""")


@pytest.mark.timeout(180)
def test_two_process_deepspeed_step_keeps_ranks_identical(tmp_path):
    tiny_actor(tmp_path / "init.pt")
    store = EpisodeStore(tmp_path / "store", fsync=False)
    for i in range(3):
        write_episode(store, "robot-0", f"ep-{i}", 9, success=True, seed=i,
                      intervention=np.arange(9) < 2)
    write_episode(store, "operator", "demo-0", 8, success=True, source="demo", seed=7)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "rank.py"),
                                       str(tmp_path), str(REPO)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=150)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    init = TorchActor.load(tmp_path / "init.pt").model.state_dict()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(r0[k], init[k]) for k in r0)
    # rank 0 alone uploaded the checkpoint
    assert open_store(tmp_path / "out" / "objects").get_bytes(
        "learner/checkpoints/latest") == b"step1"

"""The learner training a transformers actor (``--actor.type hf``) on the tiny random InternVL
of tests/cloud/models: PPO moves it toward the rewarded episode, in full and through LoRA
adapters, the saved actor is a checkpoint folder that loads back with the trained weights, and
two processes over gloo (ZeRO-2 and ZeRO-3) end with identical, moved weights."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cloud.models.test_hf_critic import NO_TILES, raw_and_prepared
from tests.cloud.test_learner import make_steps
from tests.helpers import free_port
from vlac.cloud.learner.actors import ActorConfig
from vlac.cloud.learner.algorithms.ppo import PPOConfig
from vlac.cloud.learner.config import BCConfig, LearnerConfig, PublishConfig, RewardsConfig
from vlac.cloud.learner.hf_policy import HFPolicy
from vlac.cloud.learner.process import Learner
from vlac.cloud.models.hf_actor import TransformersActor, prepare_actor_checkpoint
from vlac.cloud.store.episodes import EpisodeStore
from vlac.shared.config import ConfigError
from vlac.shared.objstore import open_store

pytestmark = pytest.mark.filterwarnings("ignore")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[3]
TASK = "press the button"


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    """A prepared tiny InternVL actor whose action tokens have random rows (a fresh one's are
    equal: a uniform policy whose log-probs no update could be read from)."""
    root = tmp_path_factory.mktemp("hf_learner")
    model, _, n_tok = raw_and_prepared(root, prepare_actor_checkpoint)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_tok:].normal_(0, 0.02, generator=gen)
        model.get_output_embeddings().weight[n_tok:].normal_(0, 0.5, generator=gen)
    model.save_pretrained(root / "ready")
    return root / "ready"


def fill_store(root: Path, *, demo: bool = False) -> None:
    """Two 6-step episodes of one task from one robot: ep-0 succeeded, ep-1 failed."""
    store = EpisodeStore(root / "store", fsync=False)
    for i in range(2):
        store.write_episode("robot-0", f"ep-{i}", TASK, make_steps(6, seed=i), i == 0,
                            task_id="button-v3")
    if demo:
        store.write_episode("operator", "demo-0", TASK, make_steps(5, seed=9), True,
                            source="demo", task_id="button-v3")


def config(root: Path, init: Path, *, actor=None, bc=None, publish=None, lr=3e-3, **kw
           ) -> LearnerConfig:
    """Sparse rewards, group advantages: the success gets +, the failure - (no critic)."""
    base = dict(store_root=root / "store", init=init, out=root / "out",
                features=root / "features", object_store=str(root / "objects"),
                episodes_per_update=2, once=True, threads=1, checkpoint_every=1)
    return LearnerConfig(
        **{**base, **kw}, actor=ActorConfig(type="hf", **(actor or {})),
        rewards=RewardsConfig(mode="sparse"),
        algorithm=PPOConfig(epochs=4, minibatch_size=12, lr=lr, target_kl=0.0),
        bc=BCConfig(**{"batch_size": 4, "coef": 0.0, "steps": 0, "takeover_replay": 0,
                       **(bc or {})}), publish=publish or PublishConfig())


def episode_logps(policy, root: Path) -> list[float]:
    """The summed log-prob of each stored episode's tokens under ``policy``."""
    store, out = EpisodeStore(root / "store"), []
    for i in range(2):
        s = store.load_episode("robot-0", f"ep-{i}").steps
        with torch.no_grad():
            lp, _, _ = policy.action_logprobs([TASK] * len(s.proprio),
                                              torch.from_numpy(s.images["corner"]),
                                              torch.from_numpy(s.proprio),
                                              torch.from_numpy(s.action_tokens.astype(np.int64)))
        out.append(float(lp.sum()))
    return out


def loaded(path: Path) -> HFPolicy:
    return HFPolicy(TransformersActor(path, (-1.0,) * 4, (1.0,) * 4, images_kwargs=NO_TILES))


def test_ppo_moves_the_transformers_actor_toward_the_success_and_saves_a_folder(tmp_path,
                                                                                 init):
    fill_store(tmp_path)
    before = episode_logps(loaded(init), tmp_path)
    learner = Learner(config(tmp_path, init))
    summary = learner.run()
    assert summary["version"] == 1 and summary["episodes"] == 2
    after = episode_logps(learner.algorithm.policy, tmp_path)
    assert after[0] > before[0] + 1.0  # the success's tokens more likely
    assert after[1] < before[1] - 1.0  # the failure's less
    # the saved actor is a checkpoint folder, with the trained weights, in --out and uploaded
    assert (tmp_path / "out" / "actor" / "config.json").exists()
    np.testing.assert_allclose(episode_logps(loaded(tmp_path / "out" / "actor"), tmp_path),
                               after, atol=1e-3)
    keys = open_store(tmp_path / "objects").list("learner/checkpoints/step1/actor/")
    assert any(k.endswith("vlac_value_head.pt") for k in keys)
    # the snapshot is a TransformersActor that acts with the same weights
    snap = learner.snapshot()
    assert isinstance(snap, TransformersActor) and snap.version == 1
    np.testing.assert_allclose(episode_logps(HFPolicy(snap), tmp_path), after, atol=1e-4)
    # a fresh output folder resumes from the object store: version, weights, optimizer
    again = Learner(config(tmp_path, init, out=tmp_path / "out2"))
    assert again.version == 1 and again.consumed == learner.consumed
    assert len(again.algorithm.engine.optimizer.state) > 0
    torch.testing.assert_close(again.algorithm.policy.state_dict(),
                               learner.algorithm.policy.state_dict())


def test_lora_trains_the_adapters_and_the_value_head_only(tmp_path, init):
    fill_store(tmp_path)
    before = episode_logps(loaded(init), tmp_path)
    # adapters start at zero (B = 0) and take a larger step than full fine-tuning, as usual
    learner = Learner(config(tmp_path, init, actor={"lora_rank": 4}, lr=3e-2))
    policy = learner.algorithm.policy
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    # the adapters, the action tokens' rows (cloud.models.lora) and the value head
    assert trainable and all("lora_" in n or "trainable_tokens" in n or
                             n.startswith("value_head") for n in trainable)
    assert any("trainable_tokens" in n for n in trainable)
    base = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    assert learner.update(learner.poll())["learned"]
    for n, p in policy.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    after = episode_logps(policy, tmp_path)
    assert after[0] > before[0] and after[1] < before[1]
    learner.save_checkpoint()  # adapters merged into a plain checkpoint
    saved = loaded(tmp_path / "out" / "actor")
    assert not any("lora_" in n for n, _ in saved.named_parameters())
    np.testing.assert_allclose(episode_logps(saved, tmp_path), after, atol=1e-3)


def test_published_versions_reach_the_robot_as_onnx_that_acts_as_the_learner(tmp_path, init):
    """The publish hook exports the learner's transformers actor (ONNX, INT8-stored weights),
    signs and uploads it; the robot's OnnxPolicy loads it and picks the learner's tokens."""
    from vlac.cloud.actor.export import ActorPublisher
    from vlac.cloud.fleet.publisher import Publisher, PublisherConfig, artifact_keys
    from vlac.edge.runtime import OnnxPolicy

    fill_store(tmp_path, demo=True)
    pub = Publisher(PublisherConfig(fleet_dir=tmp_path / "fleet",
                                    object_store=str(tmp_path / "objects"), precision="fp32",
                                    signing_key=tmp_path / "keys" / "publisher.ed25519"))
    hook = ActorPublisher(pub, tmp_path / "store", ["button-v3"])
    learner = Learner(config(tmp_path, init), on_publish=hook.publish)
    learner.run()
    assert pub.fleet.latest_version() == 1
    local = tmp_path / "robot" / "actor.onnx"
    pub.store.get_file(artifact_keys(1, "fp32")[0], local)
    policy = OnnxPolicy(local)
    assert policy.version == 1 and policy.meta["tasks"] == [TASK]
    snap = learner.snapshot()
    s = EpisodeStore(tmp_path / "store").load_episode("robot-0", "ep-0").steps
    for t in range(3):
        image, proprio = s.images["corner"][t], s.proprio[t]
        _, tokens, logp, _ = snap.act(image, proprio, TASK, greedy=True)
        got, logps, _ = policy.run(image, proprio, TASK, greedy=True)
        assert got.tolist() == tokens.tolist() and abs(float(logps.sum()) - logp) < 1e-3


def test_behaviour_cloning_on_a_demonstrations_frames_and_sentence(tmp_path, init):
    """BC alone (the one fleet episode has no group to be compared with): the demo's tokens
    become more likely."""
    store = EpisodeStore(tmp_path / "store", fsync=False)
    store.write_episode("robot-0", "ep-0", TASK, make_steps(4, seed=0), True, task_id="b")
    demo = make_steps(5, seed=9)
    store.write_episode("operator", "demo-0", TASK, demo, True, source="demo", task_id="b")

    def demo_logp(policy):
        with torch.no_grad():
            return float(policy.action_logprobs(
                [TASK] * 5, torch.from_numpy(demo.images["corner"]),
                torch.from_numpy(demo.proprio),
                torch.from_numpy(demo.action_tokens.astype(np.int64)))[0].sum())

    learner = Learner(config(tmp_path, init, bc={"coef": 1.0, "steps": 5, "lr": 3e-3}))
    before = demo_logp(learner.algorithm.policy)
    stats = learner.update(learner.poll(), learner.demo_episodes())
    assert stats["bc_samples"] == 5 and stats["ppo_samples"] == 4 and stats["learned"]
    assert demo_logp(learner.algorithm.policy) > before + 1.0


RANK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    root, repo, init, stage = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    sys.path.insert(0, repo)
    from tests.cloud.learner.test_hf_learner import config, episode_logps, loaded
    from vlac.cloud.learner.process import Learner

    before = episode_logps(loaded(init), root)
    learner = Learner(config(root, init, zero_stage=stage, max_updates=1))
    assert learner.world == 2, learner.world
    partitioned = [hasattr(p, "ds_id") for p in learner.algorithm.policy.parameters()]
    assert all(partitioned) if stage == 3 else not any(partitioned), partitioned
    summary = learner.run()
    assert summary["version"] == 1, summary
    with learner.actor.gathered():  # ZeRO-3: every rank gathers the partitioned weights
        state = {k: v.detach().clone() for k, v in learner.algorithm.policy.state_dict().items()}
        after = episode_logps(learner.algorithm.policy, root)
    # toward the reward: the success's tokens more likely, the failure's less
    assert after[0] > before[0] and after[1] < before[1], (before, after)
    torch.save(state, root / f"rank{learner.rank}.pt")
    learner.close()
""")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_end_with_identical_moved_weights(tmp_path, init, stage):
    fill_store(tmp_path, demo=True)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    port, procs = str(free_port()), []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(tmp_path / "rank.py"), str(tmp_path), str(REPO), str(init),
             str(stage)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=280)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    start = loaded(init).state_dict()
    assert r0.keys() == start.keys()
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(r0[k], start[k]) for k in r0)
    # rank 0 wrote the gathered actor: it loads with rank 0's weights
    saved = loaded(tmp_path / "out" / "actor").state_dict()
    for k in r0:
        torch.testing.assert_close(saved[k], r0[k], msg=k)
    assert open_store(tmp_path / "objects").get_bytes("learner/checkpoints/latest") == b"step1"


def test_what_a_transformers_actor_cannot_do_yet_is_refused(tmp_path, init):
    def refused(match, **kw):
        with pytest.raises(ConfigError, match=match):
            config(tmp_path, init, **kw)

    refused("LoRA adapters are merged", zero_stage=3, actor={"lora_rank": 4})
    with pytest.raises(ConfigError, match="ZeRO-3 serves --actor"):
        LearnerConfig(zero_stage=3)
    with pytest.raises(ConfigError, match="reads the small actor's image features"):
        LearnerConfig(actor=ActorConfig(type="hf"), algorithm={"name": "parl"})
    with pytest.raises(ConfigError, match="LoRA adapts the transformers actor only"):
        ActorConfig(lora_rank=4)
    with pytest.raises(ConfigError, match="one lower and one upper bound"):
        ActorConfig(type="hf", low=[-1.0], high=[1.0, 1.0])
    with pytest.raises(ConfigError, match="is not a checkpoint folder"):
        Learner(config(tmp_path, tmp_path / "actor.pt"))
    with pytest.raises(ConfigError, match="lora_targets"):
        fill_store(tmp_path)
        Learner(config(tmp_path, init, actor={"lora_rank": 2, "lora_targets": ["no_such"]}))

"""Actor: imitation pretraining (DeepSpeed) on its INT8 image encoder, ONNX export with
preprocessing inside (that encoder + the head; the older fp32-encoder path as one QDQ graph),
the edge runtime on it, and the edge agent driving a robot with it into a real ingest."""

import json

import numpy as np
import onnx
import pytest
import torch

from tests.helpers import ThreadIngest, ingest_config, sender_config
from vlac.cloud.actor.export import ActorExportConfig, example_inputs, int8_parity_warning
from vlac.cloud.actor.export import main as export_main
from vlac.cloud.actor.model import TorchActor
from vlac.cloud.actor.pretrain import ActorPretrainConfig, train
from vlac.cloud.store.episodes import EpisodeStore
from vlac.edge.process import EdgeAgentConfig
from vlac.edge.process import main as edge_run
from vlac.edge.robots.metaworld import MetaWorldRobotConfig
from vlac.edge.runtime import OnnxPolicy, PolicyLoadError, choose_providers
from vlac.infra.demos import DemosCollectConfig
from vlac.infra.demos import main as collect
from vlac.shared.config import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("actor")
    collect(DemosCollectConfig(tasks=["reach-v3"], episodes=2, noise=0.05, max_steps=80,
                               store_root=root / "store"))
    cfg = ActorPretrainConfig(store_root=root / "store", out=root / "actor",
                              features=root / "features", tasks=["reach-v3"],
                              demos_per_task=2, steps=40, batch_size=16)
    actor, summary = train(cfg)
    res = export_main(ActorExportConfig(actor=root / "actor" / "actor.pt",
                                        out=root / "export", store_root=root / "store",
                                        tasks=["reach-v3"], calibration_frames=16, version=3))
    return root, actor, summary, res


def test_pretraining_learns_the_demonstrations(exported):
    _, _, summary, _ = exported
    log = summary["log"]
    assert log[-1]["loss"] < log[0]["loss"]
    assert summary["demos"]["reach-v3"] and len(summary["demos"]["reach-v3"]) == 2


def test_pretrain_refuses_too_few_demos(exported):
    root = exported[0]
    with pytest.raises(ValueError, match="vlac demos collect"):
        train(ActorPretrainConfig(store_root=root / "store", out=root / "x",
                                  features=root / "features", tasks=["reach-v3"],
                                  demos_per_task=50, steps=1))
    with pytest.raises(ConfigError, match="`demos_per_task`"):
        ActorPretrainConfig(demos_per_task=0)


def _frames(root, n=6):
    store = EpisodeStore(root / "store")
    info = store.list_episodes()[-1]
    ep = store.load_episode(info["robot_id"], info["episode_id"])
    idx = np.linspace(0, len(ep) - 1, n).astype(int)
    return info["task"], ep.steps.images["corner"][idx], ep.steps.proprio[idx]


def test_fp32_export_matches_torch(exported):
    """The fp32 artifact of an INT8-encoder actor is the learner's actor exactly: the same
    INT8 encoder graph, the fp32 head."""
    root, actor, _, res = exported
    assert actor.int8_encoder is not None and exported[2]["encoder"] == "int8"
    task, frames, proprio = _frames(root)
    policy = OnnxPolicy(res["fp32"], greedy=True)
    assert policy.version == 3 and policy.providers[0] == "CPUExecutionProvider"
    for img, p in zip(frames, proprio, strict=True):
        tokens, logps, value = policy.run(img, p, task)
        _, t_ref, lp_ref, v_ref = actor.act(img, p, task, greedy=True)
        np.testing.assert_array_equal(tokens, t_ref)
        assert abs(float(logps.sum()) - lp_ref) < 1e-3 and abs(value - v_ref) < 1e-3


def _meta(path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["vlac"])


def test_int8_export_is_smaller_and_close_to_the_learners_actor(exported):
    root, actor, _, res = exported
    assert res["int8_bytes"] < 0.75 * res["fp32_bytes"]
    model = onnx.load(res["int8"])
    ops = {n.op_type for n in model.graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # the INT8 encoder
    int8_weights = [i for i in model.graph.initializer
                    if i.name.endswith("_int8") and i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 10  # the head's matrices and token embedding
    meta = _meta(res["int8"])
    assert meta["action_tokenizer"]["bins"] == 256 and meta["policy_version"] == 3
    assert (meta["encoder"], meta["head"]) == ("int8", "int8-weights")
    task, frames, proprio = _frames(root)
    greedy = OnnxPolicy(res["int8"], greedy=True)
    gaps = []
    for img, p in zip(frames, proprio, strict=True):
        tokens, logps, _ = greedy.run(img, p, task)
        assert tokens.shape == (4,) and ((tokens >= 0) & (tokens < 256)).all()
        # the learner's log-probs of the INT8 graph's own tokens
        t = torch.from_numpy
        with torch.no_grad():
            lp, _, _ = actor.model.action_logprobs(
                t(actor.text_encoder.encode([task])),
                t(actor.image_encoder.encode(img[None]).astype(np.float32)),
                t(p[None].astype(np.float32)), t(tokens[None].astype(np.int64)))
        gaps.append(abs(float(lp[0]) - float(logps.sum())))
    assert max(gaps) < 0.2, gaps  # only the head's weights are rounded


def _quantized_convs(model) -> int:
    """Convolutions whose weight comes out of a DequantizeLinear (INT8 in the QDQ graph)."""
    g = model.graph
    dq = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in g.node if n.op_type == "Conv" and n.input[1] in dq)


def test_pretraining_keeps_the_chosen_leading_convolutions_in_fp32(exported, tmp_path):
    root, actor, _, _ = exported
    default = _quantized_convs(onnx.load_from_string(actor.int8_encoder.onnx))
    more, _ = train(ActorPretrainConfig(store_root=root / "store", out=tmp_path / "a",
                                        features=root / "features", tasks=["reach-v3"],
                                        demos_per_task=2, steps=1, batch_size=8,
                                        calibration_frames=16, fp32_convs=6))
    assert default > 20
    assert _quantized_convs(onnx.load_from_string(more.int8_encoder.onnx)) == default - 4
    # its features are cached apart from the other encoder's
    assert len({p.name.split("__")[-1] for p in (root / "features").glob("*.npy")}) == 2
    # resuming from its checkpoint keeps learning on the same encoder
    kept = tmp_path / "a" / "image_encoder_int8.onnx"
    stamp = kept.stat().st_mtime_ns
    resumed, _ = train(ActorPretrainConfig(store_root=root / "store", out=tmp_path / "a",
                                           features=root / "features", tasks=["reach-v3"],
                                           demos_per_task=2, steps=2, batch_size=8))
    assert resumed.int8_encoder.onnx == more.int8_encoder.onnx
    assert kept.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="`fp32_convs`"):
        ActorPretrainConfig(fp32_convs=-1)
    with pytest.raises(ConfigError, match="`encoder`"):
        ActorPretrainConfig(encoder="int4")


def test_an_fp32_encoder_actor_exports_as_one_quantized_graph(exported, tmp_path):
    """``--encoder fp32`` (and every older checkpoint): the whole fp32 graph, and its INT8
    variant quantized as one QDQ graph with the chosen convolutions kept in fp32."""
    root, int8_actor, _, _ = exported
    actor, summary = train(ActorPretrainConfig(
        store_root=root / "store", out=tmp_path / "a", features=root / "features",
        tasks=["reach-v3"], demos_per_task=2, steps=5, batch_size=8, encoder="fp32"))
    assert actor.int8_encoder is None and summary["encoder"] == "fp32"
    assert "pretrain it again" in int8_parity_warning(actor)
    assert int8_parity_warning(int8_actor) is None
    assert not (tmp_path / "a" / "image_encoder_int8.onnx").exists()
    res = export_main(ActorExportConfig(actor=tmp_path / "a" / "actor.pt", out=tmp_path / "x",
                                        store_root=root / "store", tasks=["reach-v3"],
                                        calibration_frames=8, fp32_convs=6))
    assert "encoder" not in _meta(res["fp32"]) and _meta(res["int8"])["precision"] == "int8"
    convs = _quantized_convs(onnx.load(res["int8"]))
    assert convs == _quantized_convs(onnx.load_from_string(int8_actor.int8_encoder.onnx)) - 4
    task, frames, proprio = _frames(root, 2)
    policy = OnnxPolicy(res["fp32"], greedy=True)
    for img, p in zip(frames, proprio, strict=True):
        _, t_ref, lp_ref, _ = actor.act(img, p, task, greedy=True)
        tokens, logps, _ = policy.run(img, p, task)
        np.testing.assert_array_equal(tokens, t_ref)
        assert abs(float(logps.sum()) - lp_ref) < 1e-3
    with pytest.raises(ConfigError, match="`fp32_convs`"):
        ActorExportConfig(actor=root / "actor" / "actor.pt", fp32_convs=-1)


def test_publisher_ships_int8_or_the_exact_fp32_graph(exported, tmp_path):
    from vlac.cloud.actor.export import ActorPublisher
    from vlac.cloud.fleet.publisher import Publisher, PublisherConfig
    from vlac.shared import manifest as mf

    root = exported[0]
    task, frames, proprio = _frames(root, n=3)
    for precision in ("int8", "fp32"):
        actor = TorchActor.load(root / "actor" / "actor.pt")
        pub = Publisher(PublisherConfig(
            fleet_dir=tmp_path / precision, object_store=str(tmp_path / "objects"),
            signing_key=tmp_path / "keys" / "publisher.ed25519", precision=precision))
        version = 7 if precision == "int8" else 8
        m = ActorPublisher(pub, root / "store", ["reach-v3"], calibration_frames=8).publish(
            actor, version)
        assert m.artifact == f"weights/v00000{version}/actor_{precision}.onnx"
        assert pub.fleet.version(version)["artifact_key"] == m.artifact
        path = tmp_path / "objects" / m.artifact
        assert mf.file_digest(path) == (m.sha256, m.size)
        policy = OnnxPolicy(path, greedy=True)
        assert policy.meta["precision"] == precision and policy.version == version
        assert policy.meta["head"] == ("fp32" if precision == "fp32" else "int8-weights")
        if precision == "fp32":  # the robots act exactly as the learner's weights
            for img, p in zip(frames, proprio, strict=True):
                np.testing.assert_array_equal(policy.run(img, p, task)[0],
                                              actor.act(img, p, task, greedy=True)[1])
        pub.fleet.close()
    with pytest.raises(ConfigError, match="`precision`"):
        PublisherConfig(precision="fp16")


def test_sampling_uses_temperature_and_gumbel(exported):
    root, actor, _, res = exported
    task, frames, proprio = _frames(root, 2)
    inputs = example_inputs(actor, frames[0], proprio[0], actor.text_encoder.encode([task])[0])
    graph_tokens = []
    policy = OnnxPolicy(res["fp32"], temperature=5.0, seed=0)
    for _ in range(20):
        graph_tokens.append(tuple(policy.run(frames[0], proprio[0], task)[0]))
    assert len(set(graph_tokens)) > 1  # hot sampling varies
    greedy = OnnxPolicy(res["fp32"], greedy=True)
    assert len({tuple(greedy.run(frames[0], proprio[0], task)[0]) for _ in range(3)}) == 1
    # the graph's log-probs are those of softmax(logits / T)
    with torch.no_grad():
        t = torch.from_numpy
        feat = t(actor.image_encoder.encode(frames[:1]).astype(np.float32))
        logits, _ = actor.model.actor_forward(t(inputs["text"]), feat, t(inputs["proprio"]),
                                              torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 256)


def test_learner_scores_tokens_at_the_robots_temperature(exported):
    """Behaviour log-probs from a robot sampling at T are what the learner recomputes at T
    (LearnerConfig.algorithm.temperature), and not what it computes at 1."""
    root, actor, _, res = exported
    task, frames, proprio = _frames(root, 2)
    policy = OnnxPolicy(res["fp32"], temperature=2.0, seed=3)
    tokens, logps, _ = policy.run(frames[1], proprio[1], task)
    t = torch.from_numpy
    args = (t(actor.text_encoder.encode([task])),
            t(actor.image_encoder.encode(frames[1:2]).astype(np.float32)),
            t(proprio[1:2].astype(np.float32)), t(tokens[None].astype(np.int64)))
    with torch.no_grad():
        at_2, ent_2, _ = actor.model.action_logprobs(*args, temperature=2.0)
        at_1, ent_1, _ = actor.model.action_logprobs(*args)
    assert abs(float(at_2[0]) - float(logps.sum())) < 1e-3
    assert abs(float(at_1[0]) - float(logps.sum())) > 0.1 and float(ent_2[0]) > float(ent_1[0])


def test_runtime_refuses_bad_input(exported, tmp_path):
    root, _, _, res = exported
    task, frames, proprio = _frames(root, 1)
    policy = OnnxPolicy(res["int8"])
    with pytest.raises(ValueError, match="was not exported with this policy"):
        policy.run(frames[0], proprio[0], "juggle three balls")
    with pytest.raises(ValueError, match="image must be uint8"):
        policy.run(frames[0][:64], proprio[0], task)
    with pytest.raises(PolicyLoadError, match="vlac actor export"):
        OnnxPolicy(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(PolicyLoadError, match="not a loadable ONNX model"):
        OnnxPolicy(bad)


def test_provider_fallback_without_gpus():
    assert choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider",
                             "TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers([]) == ["CPUExecutionProvider"]


def test_edge_agent_drives_a_robot_with_the_int8_actor(exported, tmp_path, keyring):
    res = exported[3]
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        cfg = EdgeAgentConfig(
            sender=sender_config(keyring, "robot-2", ingest.address, tmp_path / "spool"),
            robot=MetaWorldRobotConfig(task="reach-v3", seed=9, max_steps=20, instruction=0),
            policy="onnx", policy_path=res["int8"], episodes=2, chunk_steps=8, quiet=True)
        summary = edge_run(cfg)
        assert summary["drained"] and summary["episodes"] == 2
        eps = ingest.store.list_episodes()
        assert len(eps) == 2
        ep = ingest.store.load_episode("robot-2", eps[0]["episode_id"])
        assert (ep.steps.policy_version == 3).all()
        assert (ep.steps.logprob < 0).all() and not ep.steps.intervention.any()


def test_a_new_version_continues_the_robots_sampling_noise(exported):
    """Each weight swap loads a new policy; with the robot's one noise stream handed over it
    does not replay the previous version's Gumbel draws from the start."""
    from vlac.edge.process import load_onnx

    root, _, _, res = exported
    task, frames, proprio = _frames(root, 2)
    cfg = EdgeAgentConfig(robot=MetaWorldRobotConfig(task="reach-v3", seed=4),
                          policy="onnx", policy_path=res["fp32"], temperature=5.0)

    def first_draws(policy):
        return [tuple(policy.run(frames[0], proprio[0], task)[0]) for _ in range(4)]

    fresh = [first_draws(load_onnx(cfg, res["fp32"])) for _ in range(2)]
    assert fresh[0] == fresh[1]  # same seed, new policy: the same noise again
    noise = np.random.default_rng(cfg.robot.seed)
    old, new = (first_draws(load_onnx(cfg, res["fp32"], noise)) for _ in range(2))
    assert old == fresh[0] and new != old


def test_torch_actor_round_trip(exported, tmp_path):
    from vlac.cloud.models.encoders import ImageEncoder

    _, actor, _, _ = exported
    actor.save(tmp_path / "a.pt")
    # an actor with its own INT8 encoder keeps it, whatever encoder the caller offers
    back = TorchActor.load(tmp_path / "a.pt", image_encoder=ImageEncoder(),
                           text_encoder=actor.text_encoder)
    for a, b in zip(actor.model.state_dict().values(), back.model.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b)
    assert back.int8_encoder.onnx == actor.int8_encoder.onnx
    with pytest.raises(ValueError, match="not a critic checkpoint"):
        TorchActor.model_from_critic(tmp_path / "a.pt")


def test_feature_noise_is_relative_and_off_by_default():
    from vlac.cloud.actor.pretrain import _noisy

    f = np.full((64, 16, 1280), 2.0, np.float32)
    gen = np.random.default_rng(0)
    np.testing.assert_array_equal(_noisy(f, 0.0, gen).numpy(), f)
    noisy = _noisy(f, 0.2, gen).numpy()
    assert abs(noisy.mean() - 2.0) < 0.01 and abs(noisy.std() - 0.4) < 0.01


def test_mean_tokens_decode_each_dimensions_mean_bin(exported):
    """The mean-bin decode by hand: each dimension's token is the rounded expected bin under
    softmax(logits / T), given the dimensions decoded before it."""
    root, actor, _, _ = exported
    task, frames, proprio = _frames(root, 1)
    t = torch.from_numpy
    text = t(actor.text_encoder.encode([task]))
    feat = t(actor.image_encoder.encode(frames[:1]).astype(np.float32))
    p = t(proprio[:1].astype(np.float32))
    for temperature in (1.0, 0.5):
        tokens = actor.mean_tokens(frames[0], proprio[0].astype(np.float32), task, temperature)
        expected = torch.zeros(1, 4, dtype=torch.long)
        with torch.no_grad():
            for k in range(4):
                logits, _ = actor.model.actor_forward(text, feat, p, expected)
                probs = (logits[0, k] / temperature).softmax(-1).numpy()
                expected[0, k] = int(np.round((probs * np.arange(256)).sum()))
        assert tokens.dtype == np.int32 and tokens.tolist() == expected[0].tolist()

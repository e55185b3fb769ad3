"""What benchmarks/fleet.py publishes and reports for deltas: the kinds of update
(benchmarks/weight_changes.py) change what they say and nothing else, the artifacts are a
chain of PPO updates, and the key line comes from the delta rows."""

import fleet
import numpy as np
import onnx
import pytest
import weight_changes
from onnx import TensorProto, helper, numpy_helper


def graph(path):
    """An encoder and a head tensor in INT8 and a head scale in fp32, with vlac metadata."""
    rng = np.random.default_rng(0)
    inits = {"enc/w_int8": rng.integers(-127, 128, (64, 64)).astype(np.int8),
             "head/w_int8": rng.integers(-127, 128, (64, 64)).astype(np.int8),
             "head/w_scale": rng.random((1, 64)).astype(np.float32),
             "head/axes": np.array([1], np.int64)}
    nodes = [helper.make_node("Cast", ["head/w_int8"], ["wf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["wf", "head/w_scale"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p = model.metadata_props.add()
    p.key, p.value = "vlac", '{"policy_version": 1}'
    onnx.save(model, str(path))
    return path


def tensors(path):
    m = onnx.load(str(path))
    meta = next(p.value for p in m.metadata_props if p.key == "vlac")
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}, meta


def test_a_ppo_update_moves_a_few_head_weights_by_one_step_and_every_head_float(tmp_path):
    before, _ = tensors(graph(tmp_path / "v1.onnx"))
    after, meta = tensors(weight_changes.changed(tmp_path / "v1.onnx", tmp_path / "v2.onnx",
                                                 "ppo", 2, seed=0))
    assert '"policy_version": 2' in meta
    np.testing.assert_array_equal(after["enc/w_int8"], before["enc/w_int8"])  # frozen
    np.testing.assert_array_equal(after["head/axes"], before["head/axes"])  # a constant
    step = after["head/w_int8"].astype(int) - before["head/w_int8"]
    assert set(np.unique(step)) <= {-1, 0, 1}
    assert 0.01 < np.mean(step != 0) < 0.03
    ratio = after["head/w_scale"] / before["head/w_scale"]
    assert np.all(ratio != 1) and np.all(np.abs(ratio - 1) < 0.01)


@pytest.mark.parametrize("kind, encoder_changes", [("head", False), ("all", True)])
def test_retrains_shuffle_every_weight_they_touch(tmp_path, kind, encoder_changes):
    before, _ = tensors(graph(tmp_path / "v1.onnx"))
    after, _ = tensors(weight_changes.changed(tmp_path / "v1.onnx", tmp_path / "v2.onnx",
                                              kind, 2, seed=0))
    assert np.mean(after["head/w_int8"] != before["head/w_int8"]) > 0.9
    assert sorted(after["head/w_int8"].ravel()) == sorted(before["head/w_int8"].ravel())
    assert (np.mean(after["enc/w_int8"] != before["enc/w_int8"]) > 0.9) == encoder_changes


def test_delta_sizes_rank_the_kinds(tmp_path):
    rows = weight_changes.delta_sizes(graph(tmp_path / "v1.onnx"), tmp_path / "k", 0.8)
    ratio = {r["kind"]: r["delta_b"] / r["full_b"] for r in rows}
    assert ratio["ppo"] < ratio["head"] < ratio["all"]
    assert [r["written"] for r in rows] == [r["delta_b"] <= 0.8 * r["full_b"] for r in rows]


def test_the_toy_artifacts_are_a_chain_of_ppo_updates(tmp_path):
    fleet.make_artifacts(None, range(1, 4), tmp_path)
    first, _ = tensors(tmp_path / "v1.onnx")
    for v in (2, 3):
        now, meta = tensors(tmp_path / f"v{v}.onnx")
        assert f'"policy_version": {v}' in meta
        assert now.keys() == first.keys() and not np.array_equal(now["w"], first["w"])
        np.testing.assert_allclose(now["w"], first["w"], rtol=0.01)


def row(mode, k, p99, per_robot, artifact=1000.0):
    return {"mode": mode, "robots": k, "p99": p99, "per_robot_b": per_robot,
            "artifact_b": artifact}


def test_the_headline_is_the_delta_fleet_of_32():
    rows = [row("full", 32, 9.0, 1100), row("delta", 8, 1.0, 60), row("delta", 32, 2.0, 50)]
    assert fleet.headline(rows) == (2.0, 50, 0.05)
    assert fleet.headline(rows[:1]) == (9.0, 1100, 1.1)  # --modes full
    p99, per_robot, _ = fleet.headline([row("delta", 8, 1.0, 60)])
    assert np.isnan(p99) and per_robot == 60


def test_modes_are_checked():
    assert fleet.parse_args([]).mode_list == ["full", "delta"]
    assert fleet.parse_args(["--modes", "delta"]).mode_list == ["delta"]
    with pytest.raises(SystemExit):
        fleet.parse_args(["--modes", "fast"])

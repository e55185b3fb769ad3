"""Weight deltas (vlac.shared.delta): exact rebuilds, small deltas for small weight changes on
an ONNX graph, and refusals, by name, of whatever does not fit."""

import itertools
import lzma
import zlib

import msgspec
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from vlac.shared import delta


def int8_graph(weights: np.ndarray, version: int) -> bytes:
    """A small INT8-weight ONNX graph (Cast, Mul by a scale, MatMul) with vlac metadata."""
    scale = np.full((1, weights.shape[1]), 0.01, np.float32)
    nodes = [helper.make_node("Cast", ["w_int8"], ["w_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["w_float", "w_scale"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weights.shape[1]])],
        [numpy_helper.from_array(weights, "w_int8"), numpy_helper.from_array(scale, "w_scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    p = model.metadata_props.add()
    p.key, p.value = "vlac", f'{{"policy_version": {version}, "note": "{"x" * 300}"}}'
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def weights():
    return np.random.default_rng(0).integers(-127, 128, (256, 256)).astype(np.int8)


def ppo_step(w: np.ndarray, fraction: float = 0.02, seed: int = 1) -> np.ndarray:
    """``fraction`` of the weights moved by one quantization step."""
    rng = np.random.default_rng(seed)
    out = w.astype(np.int16)
    pick = rng.random(w.shape) < fraction
    out[pick] += rng.choice([-1, 1], int(pick.sum()))
    return np.clip(out, -127, 127).astype(np.int8)


def test_a_small_weight_change_is_a_small_delta_that_rebuilds_exactly(weights):
    base = int8_graph(weights, 9)
    new = int8_graph(ppo_step(weights), 10)  # the version gains a digit: lengths shift
    blob = delta.make(base, new)
    assert delta.apply(base, blob, len(new)) == new
    assert len(blob) < 0.1 * len(new)
    d = delta.decode(blob)
    assert d.base_sha256 == delta.sha256(base) and d.sha256 == delta.sha256(new)
    assert len(d.lengths) <= 8  # the shared layout is a handful of segments, not thousands
    # the same bytes again: nearly nothing to move
    assert len(delta.make(new, new)) < 500  # the header: two sha256s, sizes, names


def test_every_weight_changed_costs_about_the_artifact(weights):
    base = int8_graph(weights, 1)
    new = int8_graph(np.random.default_rng(5).permutation(weights.reshape(-1))
                     .reshape(weights.shape), 2)
    blob = delta.make(base, new)
    assert delta.apply(base, blob, len(new)) == new
    assert len(blob) > 0.9 * len(new)  # what the publisher's delta_max_ratio keeps out


def test_leaves_cover_the_file_in_order_and_key_tensors_by_name(weights):
    data = int8_graph(weights, 1)
    pieces = delta.leaves(data)
    assert pieces[0][1] == 0 and pieces[-1][2] == len(data)
    assert all(a[2] == b[1] for a, b in itertools.pairwise(pieces))
    keys = [k for k, _, _ in pieces]
    assert len(set(keys)) == len(keys)
    raw = [(s, e) for k, s, e in pieces  # graph (7) / tensor by name / raw_data (9)
           if k == ((7, 0), (("tensor", "w_int8"), 0), (9, 0))]
    assert len(raw) == 1 and raw[0][1] - raw[0][0] >= weights.size  # its raw_data, whole
    assert delta.leaves(b"\xff\xff\xff") == [(("file",), 0, 3)]  # not protobuf: one piece


def test_tensors_are_matched_by_name_when_their_order_changes(weights):
    model = onnx.load_from_string(int8_graph(weights, 1))
    base = model.SerializeToString()
    inits = list(model.graph.initializer)
    del model.graph.initializer[:]
    model.graph.initializer.extend(reversed(inits))
    new = model.SerializeToString()
    blob = delta.make(base, new)
    assert delta.apply(base, blob, len(new)) == new and len(blob) < 0.05 * len(new)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.binary(max_size=3000), st.sampled_from(delta.CODECS))
def test_any_bytes_rebuild_exactly(base, new, codec):
    assert delta.apply(base, delta.make(base, new, codec), len(new)) == new


def _forged(blob: bytes, **changes) -> bytes:
    return msgspec.msgpack.encode(msgspec.structs.replace(delta.decode(blob), **changes))


def test_apply_refuses_what_does_not_fit_by_name(weights):
    base, new = int8_graph(weights, 1), int8_graph(ppo_step(weights), 2)
    blob = delta.make(base, new)
    cases = {
        "other bytes than the running artifact": (base[:-1] + b"\0", blob, len(new)),
        "the manifest says": (base, blob, len(new) + 1),
        "not a delta": (base, b"\x93junk", len(new)),
        "format version 2": (base, _forged(blob, format_version=2), len(new)),
        "unknown codec": (base, _forged(blob, codec="brotli"), len(new)),
        "outside the running artifact": (base, _forged(
            blob, lengths=[len(new)], base_offsets=[len(base) - 10]), len(new)),
        "do not cover": (base, _forged(blob, lengths=[1], base_offsets=[0]), len(new)),
        "does not decompress": (base, _forged(blob, residual=b"not lzma"), len(new)),
        "decompresses to": (base, _forged(blob, residual=lzma.compress(b"\0" * 10)),
                            len(new)),
        "unequal residual range lists": (base, _forged(blob, residual_lengths=[]), len(new)),
    }
    for why, (b, d, size) in cases.items():
        with pytest.raises(delta.DeltaError, match=why):
            delta.apply(b, d, size)


def test_a_residual_bomb_is_cut_at_the_size_the_manifest_names(weights):
    base, new = int8_graph(weights, 1), int8_graph(weights, 2)
    bomb = zlib.compress(b"\0" * (64 << 20))  # 64 MB of zeros in a few dozen KB
    forged = _forged(delta.make(base, new, "zlib"), residual=bomb, residual_offsets=[0],
                     residual_lengths=[len(new)])  # the most the ranges may name
    with pytest.raises(delta.DeltaError, match=f"decompresses to {len(new) + 1}\\+ bytes"):
        delta.apply(base, forged, len(new))
    for offsets, lengths in (([0], [len(new) + 1]), ([0, 10], [20, 5]), ([0], [1, 2])):
        with pytest.raises(delta.DeltaError, match="residual range"):
            delta.apply(base, _forged(forged, residual_offsets=offsets,
                                      residual_lengths=lengths), len(new))


def test_only_the_changed_blocks_are_carried(weights):
    base = int8_graph(weights, 1)
    changed = weights.copy()
    changed[100, 7] ^= 1  # one weight one step: one block of residual
    d = delta.decode(delta.make(base, int8_graph(changed, 2)))
    assert len(d.residual_offsets) <= 2 and sum(d.residual_lengths) <= 2 * delta.BLOCK

"""The publisher's deltas (vlac.cloud.fleet.publisher): from which versions, their signed
index, when none is written, and a real INT8 export after a PPO-like update rebuilt exactly
from a small delta, into an artifact ONNX Runtime runs."""

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from tests.helpers import tiny_policy_onnx
from vlac.cloud.fleet.publisher import Publisher, PublisherConfig, artifact_keys, delta_key
from vlac.shared import delta
from vlac.shared import manifest as mf
from vlac.shared.config import ConfigError


def publisher(tmp, **kw) -> Publisher:
    return Publisher(PublisherConfig(fleet_dir=tmp / "fleet", object_store=str(tmp / "objects"),
                                     signing_key=tmp / "keys" / "publisher.ed25519",
                                     **{"promote": "none", **kw}))


def publish(pub: Publisher, tmp, *versions: int) -> None:
    for v in versions:
        pub.upload(tiny_policy_onnx(tmp / "art" / f"v{v}.onnx", v, seed=v), v)


def index_of(pub: Publisher, version: int) -> mf.DeltaIndex:
    m = mf.decode(pub.store.get_bytes(artifact_keys(version)[1])).manifest
    verifier = mf.ManifestVerifier(pub.key.public_key())
    return verifier.check_delta_index(pub.store.get_bytes(mf.delta_index_key(
        artifact_keys(version)[1])), m)


def ppo_like(src, dst, version: int, seed: int = 0):
    """``src`` after a PPO-like update of everything but its frozen encoder: 2% of the INT8
    weights one step up or down, every fp32 tensor slightly scaled; ``version`` in its
    metadata."""
    import json

    model = onnx.load(str(src))
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        if t.name.startswith("encoder") or len(t.dims) == 0 or np.prod(t.dims) < 16:
            continue
        a = numpy_helper.to_array(t)
        if t.data_type == TensorProto.INT8:
            b = a.astype(np.int16)
            pick = rng.random(a.shape) < 0.02
            b[pick] += rng.choice([-1, 1], int(pick.sum()))
            a = np.clip(b, -128, 127).astype(np.int8)
        elif t.data_type == TensorProto.FLOAT:
            a = (a * (1 + 1e-3 * rng.standard_normal(a.shape))).astype(np.float32)
        else:
            continue
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    prop = next(p for p in model.metadata_props if p.key == "vlac")
    prop.value = json.dumps(dict(json.loads(prop.value), policy_version=version))
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real INT8 export of a tiny actor (`vlac actor export`'s QDQ path) as version 1."""
    import torch

    from tests.cloud.test_learner import TINY
    from vlac.cloud.actor.export import example_inputs, export_artifacts, metadata
    from vlac.cloud.actor.model import TorchActor
    from vlac.cloud.models.vlac import SmallVLAC

    torch.manual_seed(0)
    actor = TorchActor(SmallVLAC(TINY), camera="corner")
    rng = np.random.default_rng(0)
    text = actor.text_encoder.encode(["reach the goal"])[0]
    samples = [example_inputs(actor, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                              rng.normal(size=4).astype(np.float32), text) for _ in range(4)]
    meta = metadata(actor, ["reach the goal"], 1, (32, 32, 3))
    out = tmp_path_factory.mktemp("export")
    return export_artifacts(actor, out, meta, samples, ("int8",))["int8"]


def test_a_real_export_after_a_ppo_like_update_is_a_small_exact_delta(exported, tmp_path):
    from vlac.edge.runtime import OnnxPolicy

    pub = publisher(tmp_path, promote="production")
    pub.upload(exported, 1)
    v2 = ppo_like(exported, tmp_path / "v2.onnx", 2)
    m = pub.upload(v2, 2)
    [ref] = pub.last_deltas
    assert (ref.base_version, ref.key) == (1, delta_key(2, 1))
    assert ref.size < 0.1 * m.size, f"delta {ref.size} of {m.size} bytes"
    base = exported.read_bytes()
    rebuilt = tmp_path / "rebuilt.onnx"
    rebuilt.write_bytes(delta.apply(base, pub.store.get_bytes(ref.key), m.size))
    assert rebuilt.read_bytes() == v2.read_bytes()
    assert OnnxPolicy(rebuilt).version == 2
    assert index_of(pub, 2).deltas == [ref]


def test_bases_are_production_and_canary_first_then_the_newest(tmp_path):
    pub = publisher(tmp_path, delta_bases=3)
    publish(pub, tmp_path, 1, 2, 3, 4)
    pub.fleet.promote(1)
    pub.fleet.set_group("canary", ["robot-0"])
    pub.fleet.start_canary(2, group="canary")
    assert pub.delta_bases(5) == [1, 2, 4]
    publish(pub, tmp_path, 5)
    assert [d.base_version for d in index_of(pub, 5).deltas] == [1, 2, 4]
    for d in index_of(pub, 5).deltas:
        blob = pub.store.get_bytes(d.key)
        assert (len(blob), delta.sha256(blob)) == (d.size, d.sha256)
        assert d.base_sha256 == pub.fleet.version(d.base_version)["sha256"]
    pub.cfg.delta_bases = 0
    publish(pub, tmp_path, 6)
    assert pub.last_deltas == []
    assert not pub.store.exists(mf.delta_index_key(artifact_keys(6)[1]))


def test_a_delta_near_the_artifacts_size_is_not_written(tmp_path, caplog):
    pub = publisher(tmp_path, delta_max_ratio=0.05)  # the toy graphs differ in most bytes
    with caplog.at_level(logging.INFO, logger="vlac.cloud.fleet.publisher"):
        publish(pub, tmp_path, 1, 2)
    assert pub.last_deltas == [] and pub.store.list("weights/v000002") == [
        artifact_keys(2)[0], artifact_keys(2)[1]]
    assert any("no delta from version 1 to 2" in m and "most bytes changed" in m
               for m in caplog.messages)


def test_a_base_whose_stored_bytes_changed_gets_no_delta_and_the_version_publishes(
        tmp_path, caplog):
    publish(publisher(tmp_path), tmp_path, 1)
    pub = publisher(tmp_path)  # restarted: no artifact in memory, bases from the store
    stored = tmp_path / "objects" / artifact_keys(1)[0]
    stored.write_bytes(stored.read_bytes()[:-1] + b"\0")
    with caplog.at_level(logging.WARNING, logger="vlac.cloud.fleet.publisher"):
        publish(pub, tmp_path, 2)
    assert pub.last_deltas == [] and pub.fleet.latest_version() == 2
    assert any("robots on 1 download it whole" in m and "does not match the sha256" in m
               for m in caplog.messages)


@pytest.mark.parametrize("field, value", [("delta_bases", -1), ("delta_max_ratio", 0.0),
                                          ("delta_max_ratio", 1.5)])
def test_delta_settings_are_checked_by_name(tmp_path, field, value):
    with pytest.raises(ConfigError, match=f"`{field}`"):
        PublisherConfig(fleet_dir=tmp_path, **{field: value})

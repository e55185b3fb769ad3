import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlac.shared import wire
from vlac.shared.episode import make_chunk, synthetic_steps, validate_chunk

SPEC = wire.DEFAULT_SPEC
ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


def chunk(n=4, **kw):
    args = {"robot_id": "robot-0", "episode_id": "ep-1", "seq": 0, "task": "push the puck"}
    args.update(kw)
    return make_chunk(steps=synthetic_steps(SPEC, n), **args)


@given(robot=ids, episode=ids, seq=st.integers(0, 10_000), n=st.integers(1, 5),
       task=st.text(max_size=50), success=st.booleans(), seed=st.integers(0, 100))
@settings(max_examples=40, deadline=None)
def test_chunk_round_trip(robot, episode, seq, n, task, success, seed):
    steps = synthetic_steps(SPEC, n, seed=seed)
    final = wire.Outcome(success=success, n_chunks=seq + 1, n_steps=n * (seq + 1))
    msg = make_chunk(robot, episode, seq, task, steps, final, first_step=seq * n)
    back = wire.decode(wire.encode(msg))
    assert isinstance(back, wire.EpisodeChunk)
    assert (back.robot_id, back.episode_id, back.seq, back.task, back.final, back.first_step) \
        == (robot, episode, seq, task, final, seq * n)
    cols = validate_chunk(back, SPEC)
    np.testing.assert_array_equal(cols.images["corner"], steps.images["corner"])
    np.testing.assert_array_equal(cols.action_tokens, steps.action_tokens)
    np.testing.assert_array_equal(cols.timestamp, steps.timestamp)


small_msgs = st.one_of(
    st.builds(wire.Ack, robot_id=ids, episode_id=ids, seq=st.integers(0, 2**31),
              status=st.sampled_from(["stored", "duplicate"])),
    st.builds(wire.Error, code=st.text(max_size=20), message=st.text(max_size=200),
              field=st.text(max_size=20), episode_id=st.text(max_size=10),
              seq=st.integers(-1, 100), retry=st.booleans()),
    st.builds(wire.Heartbeat, robot_id=ids, policy_version=st.integers(-1, 2**40),
              spool_depth=st.integers(0, 10**6), spool_bytes=st.integers(0, 2**40),
              time=finite),
    st.builds(wire.HandshakeReply, accepted=st.booleans(), reason=st.text(max_size=100)),
    st.builds(wire.Handshake, protocol=st.integers(0, 10), robot_id=ids,
              config_hash=st.text(max_size=16), spec=st.just(SPEC)),
    st.builds(wire.WeightAnnouncement, robot_id=ids, version=st.integers(0, 10**6),
              seq=st.integers(0, 2**40), assignment=st.binary(max_size=300),
              signature=st.binary(max_size=64), manifest=st.binary(max_size=300)),
)


@given(msg=small_msgs)
@settings(max_examples=200, deadline=None)
def test_small_messages_round_trip(msg):
    back = wire.decode(wire.encode(msg))
    assert type(back) is type(msg)
    assert back == msg or math.isnan(getattr(msg, "time", 0.0))


@given(data=st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_crash_the_decoder(data):
    try:
        wire.decode(data)
    except wire.WireError as e:
        assert e.code in {"malformed", "unknown_type", "schema_version", "invalid", "too_large"}


def test_truncated_message_is_malformed():
    data = wire.encode(chunk())
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        with pytest.raises(wire.WireError) as e:
            wire.decode(data[:cut])
        assert e.value.code == "malformed"


def test_wrong_schema_version_is_named():
    data = msgspec.msgpack.encode(("chunk", 7, {"x": 1}))
    with pytest.raises(wire.WireError, match="schema version 7 is not supported") as e:
        wire.decode(data)
    assert e.value.field == "schema_version"


def test_unknown_and_unexpected_types():
    with pytest.raises(wire.WireError, match="'pickle' is not accepted") as e:
        wire.decode(msgspec.msgpack.encode(("pickle", 1, b"")))
    assert e.value.code == "unknown_type"
    ack = wire.encode(wire.Ack(robot_id="r", episode_id="e", seq=0, status="stored"))
    with pytest.raises(wire.WireError, match="expected one of"):
        wire.decode(ack, expect=(wire.EpisodeChunk,))


def test_size_cap_per_type():
    data = msgspec.msgpack.encode(("heartbeat", 1, b"x" * 70_000))
    with pytest.raises(wire.WireError, match="exceeds its cap of 65536") as e:
        wire.decode(data)
    assert e.value.code == "too_large"
    with pytest.raises(wire.WireError, match="hard cap"):
        wire.decode(b"\x00" * (wire.HARD_MAX_BYTES + 1))


def test_validation_error_names_the_field():
    good = msgspec.msgpack.decode(wire.encode(chunk()))
    good[2]["seq"] = -3
    with pytest.raises(wire.WireError) as e:
        wire.decode(msgspec.msgpack.encode(good))
    assert e.value.code == "invalid" and e.value.field == "$.seq"
    good[2]["seq"] = 0
    good[2]["episode_id"] = "../../etc/passwd"
    with pytest.raises(wire.WireError) as e:
        wire.decode(msgspec.msgpack.encode(good))
    assert e.value.field == "$.episode_id"
    good[2]["episode_id"] = "ok"
    good[2]["steps"]["proprio"][1] = ["a"]
    with pytest.raises(wire.WireError) as e:
        wire.decode(msgspec.msgpack.encode(good))
    assert e.value.field.startswith("$.steps.proprio")


def test_nan_and_inf_are_refused():
    steps = synthetic_steps(SPEC, 3)
    steps.proprio[1, 2] = np.nan
    msg = wire.decode(wire.encode(make_chunk("r", "e", 0, "t", steps)))
    with pytest.raises(wire.WireError, match="NaN") as e:
        validate_chunk(msg, SPEC)
    assert e.value.field == "steps.proprio"
    steps = synthetic_steps(SPEC, 3)
    steps.action[0, 0] = np.inf
    msg = wire.decode(wire.encode(make_chunk("r", "e", 0, "t", steps)))
    with pytest.raises(wire.WireError, match=r"steps\.action"):
        validate_chunk(msg, SPEC)


def test_wrong_image_shape_and_dtype():
    steps = synthetic_steps(SPEC, 2)
    steps.images["corner"] = np.zeros((2, 64, 64, 3), np.uint8)
    msg = wire.decode(wire.encode(make_chunk("r", "e", 0, "t", steps)))
    with pytest.raises(wire.WireError, match=r"expected image shape \[2, 128, 128, 3\]") as e:
        validate_chunk(msg, SPEC)
    assert e.value.field == "steps.images.corner.shape"
    steps.images = {"wrist": np.zeros((2, 128, 128, 3), np.uint8)}
    msg = wire.decode(wire.encode(make_chunk("r", "e", 0, "t", steps)))
    with pytest.raises(wire.WireError, match="expected cameras"):
        validate_chunk(msg, SPEC)


def test_array_byte_count_must_match_shape():
    arr = wire.Array("float32", (3, 4), memoryview(b"\x00" * 47))
    with pytest.raises(wire.WireError, match="needs 48 bytes but 47 came") as e:
        arr.to_numpy("steps.proprio")
    assert e.value.field == "steps.proprio.data"
    with pytest.raises(wire.WireError, match="not one of"):
        wire.Array("object", (1,), memoryview(b"x")).to_numpy()


def test_inconsistent_step_counts_and_bad_values():
    steps = synthetic_steps(SPEC, 4)
    steps.logprob = steps.logprob[:3]
    msg = wire.decode(wire.encode(make_chunk("r", "e", 0, "t", steps)))
    with pytest.raises(wire.WireError, match=r"expected shape \[4\]"):
        validate_chunk(msg, SPEC)
    steps = synthetic_steps(SPEC, 4)
    steps.action_tokens[0, 0] = 256
    msg = wire.decode(wire.encode(make_chunk("r", "e", 0, "t", steps)))
    with pytest.raises(wire.WireError, match=r"\[0, 256\)"):
        validate_chunk(msg, SPEC)
    msg = wire.decode(wire.encode(make_chunk(
        "r", "e", 2, "t", synthetic_steps(SPEC, 1),
        wire.Outcome(success=True, n_chunks=5, n_steps=3))))
    with pytest.raises(wire.WireError, match="should be seq \\+ 1"):
        validate_chunk(msg, SPEC)


def test_spec_hash_and_differences():
    other = msgspec.structs.replace(SPEC, cameras={"corner": (64, 64, 3)})
    assert other.config_hash() != SPEC.config_hash()
    assert SPEC.config_hash() == wire.DEFAULT_SPEC.config_hash()
    diff = SPEC.differences(other)
    assert len(diff) == 1 and diff[0].startswith("cameras")


def test_ids_with_a_trailing_newline_are_refused_everywhere():
    from vlac.shared.objstore import ObjectStoreError, check_key

    assert not wire.is_valid_id("robot-1\n") and wire.is_valid_id("robot-1")
    chunk = make_chunk("robot-1", "ep-1", 0, "t", synthetic_steps(wire.DEFAULT_SPEC, 1))
    for field in ("robot_id", "episode_id"):
        bad = msgspec.structs.replace(chunk, **{field: getattr(chunk, field) + "\n"})
        with pytest.raises(wire.WireError, match=f"at `\\$.{field}`"):
            wire.decode(wire.encode(bad))
    with pytest.raises(ObjectStoreError):
        check_key("versions/v1/actor.onnx\n")


# ------------------------------------------------------------------ compressed camera blocks
def test_compressed_image_blocks_round_trip_exactly_and_say_version_2():
    steps = synthetic_steps(SPEC, 16, seed=3)
    raw = wire.encode(make_chunk("r", "e", 0, "t", steps))
    zipped = wire.encode(make_chunk("r", "e", 0, "t", steps, image_codec="zstd"))
    assert msgspec.msgpack.decode(raw)[1] == 1  # nothing compressed: readable by version 1
    assert msgspec.msgpack.decode(zipped)[1] == 2
    assert len(zipped) < len(raw) / 4  # image-like frames shrink; the rest is unchanged
    back = wire.decode(zipped)
    assert back.steps.images["corner"].codec == "zstd" and back.steps.proprio.codec == ""
    cols = validate_chunk(back, SPEC)
    np.testing.assert_array_equal(cols.images["corner"], steps.images["corner"])
    np.testing.assert_array_equal(cols.proprio, steps.proprio)


def test_a_version_1_reader_refuses_a_compressed_chunk_by_its_version(monkeypatch):
    zipped = wire.encode(chunk(image_codec="zstd"))
    monkeypatch.setattr(wire.EpisodeChunk, "ACCEPTED_VERSIONS", (1,))
    with pytest.raises(wire.WireError, match=r"schema version 2 is not supported.*Upgrade"):
        wire.decode(zipped)


def _with_block(msg, block):
    steps = msgspec.structs.replace(msg.steps, images={"corner": block})
    return wire.decode(wire.encode(msgspec.structs.replace(msg, steps=steps)))


def test_decompression_bombs_are_refused_by_their_claimed_size_before_decompressing():
    import zstandard

    msg = chunk(n=2, image_codec="zstd")
    tiny = zstandard.ZstdCompressor().compress(bytes(1 << 20))  # 1 MiB of zeros, ~40 bytes
    bomb = wire.Array("uint8", (10**6, 128, 128, 3), memoryview(tiny), "zstd")
    with pytest.raises(wire.WireError, match="over the cap") as e:
        bomb.to_numpy("steps.images.corner")
    assert e.value.code == "too_large" and e.value.field == "steps.images.corner.shape"
    # in a chunk, the step count must agree with every other column before anything inflates
    with pytest.raises(wire.WireError) as e:
        validate_chunk(_with_block(msg, bomb), SPEC)
    assert e.value.code in ("too_large", "bad_shape")


def _claiming(size: int) -> bytes:
    """A real zstd frame whose header says it holds ``size`` bytes (8-byte size field)."""
    import zstandard

    frame = zstandard.ZstdCompressor().compress(bytes(1 << 12))  # header: 2-byte size field
    assert frame[4] == 0x60
    return frame[:4] + bytes([0xE0]) + size.to_bytes(8, "little") + frame[7:]


@pytest.mark.parametrize("how, code", [
    ("garbage", "bad_data"), ("truncated", "bad_data"), ("too_small", "bad_length"),
    ("too_big", "bad_length"), ("too_big_unsized", "bad_data"),
    ("lying_header", "bad_length"), ("unknown_codec", "invalid"),
])
def test_damaged_compressed_blocks_are_refused_by_name(how, code):
    import zstandard

    msg = chunk(n=2, image_codec="zstd")
    good = msg.steps.images["corner"]
    size = good.nbytes()
    data = {"garbage": b"\x28\xb5\x2f\xfd" + b"\x01" * 64,
            "truncated": bytes(good.data)[:len(good.data) // 2],
            "too_small": zstandard.ZstdCompressor().compress(bytes(size - 1)),
            "too_big": zstandard.ZstdCompressor().compress(bytes(size + 7)),
            "too_big_unsized": zstandard.ZstdCompressor(write_content_size=False).compress(
                bytes(size + 7)),
            # a header that claims 1 TiB: refused before anything is allocated
            "lying_header": _claiming(2**40),
            "unknown_codec": bytes(good.data)}[how]
    if how == "unknown_codec":  # a codec this side does not know is a field error on decode
        body = msgspec.msgpack.decode(wire.encode(msg))
        body[2]["steps"]["images"]["corner"][3] = "lz4"
        with pytest.raises(wire.WireError) as e:
            wire.decode(msgspec.msgpack.encode(body))
        assert e.value.code == code and "images" in e.value.field
        return
    with pytest.raises(wire.WireError) as e:
        validate_chunk(_with_block(msg, wire.Array("uint8", good.shape, memoryview(data),
                                                   "zstd")), SPEC)
    assert e.value.code == code and e.value.field == "steps.images.corner.data", e.value


def test_the_recorder_compresses_by_default_and_can_send_raw(tmp_path):
    from vlac.edge.transport.recorder import EpisodeRecorder
    from vlac.edge.transport.spool import Spool

    sizes = {}
    for codec in ("zstd", "none"):
        spool = Spool(tmp_path / codec)
        rec = EpisodeRecorder(spool, "r", "t", chunk_steps=8, image_codec=codec)
        rec.add(synthetic_steps(SPEC, 8))
        rec.end(True)
        [item] = spool.pending()
        data = spool.read(item)
        sizes[codec] = len(data)
        assert msgspec.msgpack.decode(data)[1] == (2 if codec == "zstd" else 1)
    assert sizes["zstd"] < sizes["none"] / 4
    assert EpisodeRecorder(Spool(tmp_path / "d"), "r", "t").image_codec == "zstd"
    with pytest.raises(ValueError, match="image_codec 'gzip'"):
        EpisodeRecorder(Spool(tmp_path / "x"), "r", "t", image_codec="gzip")

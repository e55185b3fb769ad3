"""Property-based fuzzing of what ingest does with one frame: decode, validate, store.

Whatever a robot sends, ``wire.decode`` either returns a message or raises ``WireError``;
``validate_chunk`` either returns columns or raises ``WireError``; the store either stores a
validated chunk, calls it a duplicate, or refuses it with a ``WireError``; and every episode
the store calls complete reads the same through pandas and ``load_episode``."""

import hypothesis.strategies as hs
from hypothesis import HealthCheck, given, settings

from tests.helpers import read_paths_agree
from tests.wire_strategies import frames
from vlac.cloud.store.episodes import ChunkWrite, EpisodeStore
from vlac.shared import wire
from vlac.shared.episode import validate_chunk

SMALL = wire.RobotSpec(cameras={"corner": (4, 4, 3)}, proprio_dim=4, action_dim=4,
                       action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
ROBOT_SENDS = (wire.Handshake, wire.EpisodeChunk, wire.Heartbeat)


def one_frame(store: EpisodeStore, data: bytes, seen: dict) -> None:
    try:
        msg = wire.decode(data, expect=ROBOT_SENDS)
    except wire.WireError as e:
        seen[f"decode:{e.code}"] = seen.get(f"decode:{e.code}", 0) + 1
        return
    assert isinstance(msg, ROBOT_SENDS)
    if not isinstance(msg, wire.EpisodeChunk):
        return
    try:
        cols = validate_chunk(msg, SMALL)
    except wire.WireError as e:
        seen[f"validate:{e.code}"] = seen.get(f"validate:{e.code}", 0) + 1
        return
    [written] = store.write_chunks([ChunkWrite(msg.robot_id, msg.episode_id, msg.seq,
                                               msg.task, cols, msg.final, msg.first_step,
                                               msg.source, msg.task_id)])
    key = "store:" + (written.code if isinstance(written, wire.WireError) else str(written))
    seen[key] = seen.get(key, 0) + 1


def test_decode_validate_and_store_raise_nothing_but_wire_errors(tmp_path):
    store = EpisodeStore(tmp_path, fsync=False)
    seen: dict[str, int] = {}

    @settings(max_examples=600, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frame=frames(SMALL, "robot-0"))
    def fuzz(frame):
        one_frame(store, frame[1], seen)

    fuzz()
    # the run reached every stage, and the store's rules, not just the decoder
    assert any(k.startswith("decode:") for k in seen), seen
    assert any(k.startswith("validate:") for k in seen), seen
    assert seen.get("store:True", 0) > 0 and seen.get("store:contradicts", 0) > 0, seen
    read_paths_agree(tmp_path)


@settings(max_examples=300, deadline=None, database=None)
@given(data=hs.binary(max_size=2048))
def test_any_bytes_decode_or_refuse(data):
    try:
        wire.decode(data)
    except wire.WireError as e:
        assert e.code and str(e)


def test_the_three_reported_killers_are_refused_by_name():
    from vlac.shared.episode import make_chunk, synthetic_steps

    chunk = make_chunk("robot-0", "e", 0, "t", synthetic_steps(SMALL, 1))
    huge_step = wire.encode(chunk).replace(b"\xaafirst_step\x00",
                                           b"\xaafirst_step\xcf" + b"\xff" * 8)
    assert b"\xcf" + b"\xff" * 8 in huge_step
    for data, field in [
        (huge_step, "$.first_step"),
        (b"\x93\xa5chunk\x01" + b"\x91" * 200_000 + b"\xc0", ""),  # in the envelope
    ]:
        try:
            wire.decode(data)
        except wire.WireError as e:
            assert e.field == field, e
        else:
            raise AssertionError("accepted")
    zero_by_huge = wire.Array("uint8", (0, *[2**31 - 1] * 4), memoryview(b""))
    try:
        zero_by_huge.to_numpy("steps.proprio")
    except wire.WireError as e:
        assert e.code == "bad_shape" and e.field == "steps.proprio.shape"
    else:
        raise AssertionError("accepted")

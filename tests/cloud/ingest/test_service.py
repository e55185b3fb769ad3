"""Ingest with real CURVE sockets on loopback: bad input is refused with a clear error, and
the robots that behave keep streaming meanwhile."""

import threading

import msgspec
import numpy as np
import pytest
import zmq

from tests.helpers import RawClient, ThreadIngest, ingest_config, sender_config, wait_for
from vlac.edge.transport.recorder import EpisodeRecorder
from vlac.edge.transport.sender import Sender
from vlac.shared import wire
from vlac.shared.episode import make_chunk, synthetic_steps

SPEC = wire.DEFAULT_SPEC


def chunk_bytes(robot="robot-1", ep="ep-1", seq=0, n=3, final=True, steps=None, **kw):
    steps = steps if steps is not None else synthetic_steps(SPEC, n, start_step=seq * n)
    out = wire.Outcome(success=True, n_chunks=seq + 1, n_steps=(seq + 1) * n) if final else None
    return wire.encode(make_chunk(robot, ep, seq, "push", steps, out, first_step=seq * n, **kw))


@pytest.fixture
def ingest(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ing:
        yield ing


def test_handshake_then_chunk_is_acked_after_it_is_stored(ingest, keyring):
    c = RawClient(keyring, "robot-1", ingest.address)
    reply = c.handshake()
    assert isinstance(reply, wire.HandshakeReply) and reply.accepted
    ack = c.request(chunk_bytes())
    assert ack == wire.Ack(robot_id="robot-1", episode_id="ep-1", seq=0, status="stored")
    assert ingest.store.has("robot-1", "ep-1", 0)
    assert ingest.store.list_episodes()[0]["n_steps"] == 3
    dup = c.request(chunk_bytes())
    assert dup.status == "duplicate"
    c.close()


def test_chunk_before_handshake_asks_for_one(ingest, keyring):
    c = RawClient(keyring, "robot-1", ingest.address)
    err = c.request(chunk_bytes())
    assert err.code == "handshake_required" and err.retry and err.seq == 0
    c.close()


def test_handshake_refusals_give_reasons(ingest, keyring):
    c = RawClient(keyring, "robot-1", ingest.address)
    other = msgspec.structs.replace(SPEC, cameras={"corner": (64, 64, 3)})
    r = c.handshake(other)
    assert not r.accepted
    assert "config hash mismatch" in r.reason and "cameras: expected" in r.reason
    r = c.request(wire.encode(wire.Handshake(protocol=99, robot_id="robot-1",
                                             config_hash=SPEC.config_hash(), spec=SPEC)))
    assert not r.accepted and "protocol version 99" in r.reason
    r = c.request(wire.encode(wire.Handshake(protocol=wire.PROTOCOL_VERSION,
                                             robot_id="robot-2",
                                             config_hash=SPEC.config_hash(), spec=SPEC)))
    assert not r.accepted and "does not match the key" in r.reason
    r = c.request(wire.encode(wire.Handshake(protocol=wire.PROTOCOL_VERSION,
                                             robot_id="robot-1", config_hash="0" * 16,
                                             spec=SPEC)))
    assert not r.accepted and "does not match the spec" in r.reason
    c.close()


def test_robot_cannot_write_as_another_robot(ingest, keyring):
    c = RawClient(keyring, "robot-1", ingest.address)
    c.handshake()
    err = c.request(chunk_bytes(robot="robot-2"))
    assert err.code == "robot_id_mismatch" and err.field == "robot_id"
    assert not ingest.store.has("robot-2", "ep-1", 0)
    c.close()


def _bad_messages():
    good = chunk_bytes(final=False)
    nan = synthetic_steps(SPEC, 3)
    nan.logprob[1] = np.nan
    small = synthetic_steps(SPEC, 3)
    small.images["corner"] = np.zeros((3, 32, 32, 3), np.uint8)
    body = msgspec.msgpack.decode(good)
    body[1] = 99
    zipped = msgspec.msgpack.decode(chunk_bytes(final=False, image_codec="zstd"))
    zipped[2]["steps"]["images"]["corner"][2] = b"\x28\xb5\x2f\xfd" + b"\x00" * 40
    return [
        ("random bytes", b"\x93\xff\x00garbage" * 10, "malformed", ""),
        ("truncated msgpack", good[: len(good) // 2], "malformed", ""),
        ("wrong schema version", msgspec.msgpack.encode(body), "schema_version",
         "schema_version"),
        ("oversized for its type", msgspec.msgpack.encode(("heartbeat", 1, b"x" * 100_000)),
         "too_large", "body"),
        ("NaN in an array", chunk_bytes(steps=nan), "not_finite", "steps.logprob"),
        ("wrong image shape", chunk_bytes(steps=small), "bad_shape",
         "steps.images.corner.shape"),
        ("a corrupt zstd image block", msgspec.msgpack.encode(zipped), "bad_data",
         "steps.images.corner.data"),
        ("pickle", b"\x80\x04\x95" + b"\x00" * 20, "malformed", ""),
        ("unknown type", msgspec.msgpack.encode(("exec", 1, {})), "unknown_type", "type"),
    ]


def test_bad_input_is_refused_while_another_robot_keeps_streaming(ingest, keyring, tmp_path):
    # robot-0 streams 6 episodes through the real sender the whole time
    cfg = sender_config(keyring, "robot-0", ingest.address, tmp_path / "spool0")
    spool = cfg.make_spool()
    sent = []

    def stream():
        for e in range(6):
            rec = EpisodeRecorder(spool, "robot-0", "push", chunk_steps=4)
            for i in range(3):
                rec.add(synthetic_steps(SPEC, 4, start_step=i * 4, seed=e))
            rec.end(True)
            sent.append(rec.episode_id)

    with Sender(cfg, spool, SPEC) as sender:
        t = threading.Thread(target=stream)
        t.start()
        bad = RawClient(keyring, "robot-1", ingest.address)
        assert bad.handshake().accepted
        for what, data, code, field in _bad_messages():
            reply = bad.request(data)
            assert isinstance(reply, wire.Error), what
            assert reply.code == code, (what, reply)
            assert reply.field == field, (what, reply)
            assert reply.message, what
        # still a working connection afterwards
        assert bad.request(chunk_bytes()).status == "stored"
        t.join()
        assert sender.wait_drained(30)
        bad.close()
    assert sender.stats.rejected == 0
    stored = {e["episode_id"] for e in ingest.store.list_episodes() if e["robot_id"] == "robot-0"}
    assert stored == set(sent)
    assert ingest.errors["malformed"] == 3


def test_message_over_the_hard_cap_drops_the_connection_not_the_service(ingest, keyring):
    c = RawClient(keyring, "robot-1", ingest.address)
    assert c.handshake().accepted
    c.send(b"\x00" * (wire.HARD_MAX_BYTES + 10))
    assert c.recv(1.0) is None  # libzmq closed that connection (ZMQ_MAXMSGSIZE)
    c.close()
    fresh = RawClient(keyring, "robot-1", ingest.address)
    assert fresh.handshake().accepted
    fresh.close()


def test_unknown_key_is_refused_by_authentication(ingest, keyring):
    intruder = RawClient(keyring, "intruder", ingest.address)
    intruder.send(chunk_bytes(robot="intruder"))
    events = intruder.events(2.0)
    assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in events
    assert intruder.recv(0.5) is None
    intruder.close()
    assert not ingest.robots.get("intruder")


def test_client_without_curve_never_gets_in(ingest, keyring):
    plain = RawClient(keyring, "robot-1", ingest.address, curve=False)
    plain.send(chunk_bytes())
    events = plain.events(1.5)
    assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in events
    assert plain.recv(0.5) is None
    plain.close()
    assert ingest.store.list_episodes() == []


def test_task_cannot_change_inside_an_episode(ingest, keyring):
    c = RawClient(keyring, "robot-1", ingest.address)
    c.handshake()
    assert c.request(chunk_bytes(final=False)).status == "stored"
    data = wire.encode(make_chunk("robot-1", "ep-1", 1, "another task",
                                  synthetic_steps(SPEC, 3)))
    err = c.request(data)
    assert err.code == "task_changed" and err.field == "task"
    c.close()


def test_heartbeats_update_robot_status(ingest, keyring):
    c = RawClient(keyring, "robot-1", ingest.address)
    c.handshake()
    c.send(wire.encode(wire.Heartbeat(robot_id="robot-1", policy_version=7, spool_depth=3)))
    wait_for(lambda: ingest.robots["robot-1"].policy_version == 7, 5, "heartbeat")
    assert ingest.robots["robot-1"].spool_depth == 3
    c.close()


def test_an_unforeseen_exception_in_one_frame_is_an_error_reply_not_a_dead_ingest(
        ingest, keyring, monkeypatch, caplog):
    import vlac.cloud.ingest.service as ingest_module

    real = ingest_module.validate_chunk

    def explode(chunk, spec):
        if chunk.episode_id == "boom":
            raise OverflowError("a bug nobody foresaw")
        return real(chunk, spec)

    monkeypatch.setattr(ingest_module, "validate_chunk", explode)
    c = RawClient(keyring, "robot-1", ingest.address)
    c.handshake()
    err = c.request(chunk_bytes(ep="boom"))
    assert err.code == "internal" and "OverflowError: a bug nobody foresaw" in err.message
    assert "a frame from robot-1 raised" in caplog.text
    assert c.request(chunk_bytes(ep="fine")).status == "stored"
    c.close()


def test_a_chunk_the_store_raises_on_is_refused_and_its_batch_mates_are_stored(
        ingest, keyring, monkeypatch):
    real = ingest.store.write_chunks

    def picky(chunks):
        if any(c.episode_id == "poison" for c in chunks):
            raise ValueError("pyarrow could not build this table")
        return real(chunks)

    monkeypatch.setattr(ingest.store, "write_chunks", picky)
    clients = [RawClient(keyring, r, ingest.address) for r in ("robot-1", "robot-2")]
    for c in clients:
        c.handshake()
    # sent back to back, so ingest takes them in one batch (group commit)
    clients[0].send(chunk_bytes(robot="robot-1", ep="poison"))
    clients[1].send(chunk_bytes(robot="robot-2", ep="honest"))
    bad, good = clients[0].recv(), clients[1].recv()
    assert bad.code == "unstorable" and bad.episode_id == "poison" and not bad.retry
    assert good.status == "stored" and ingest.store.has("robot-2", "honest", 0)
    for c in clients:
        c.close()


def test_commit_isolates_the_chunk_the_store_raises_on(tmp_path, keyring, monkeypatch):
    from vlac.cloud.ingest.service import Ingest, RobotStatus, _Pending
    from vlac.cloud.store.episodes import ChunkWrite

    ing = Ingest(ingest_config(keyring, tmp_path / "store"))
    batch = []
    for robot, ep in (("robot-1", "poison"), ("robot-2", "honest"), ("robot-3", "also")):
        ing.robots[robot] = RobotStatus(robot)
        batch.append(_Pending(ChunkWrite(robot, ep, 0, "push", synthetic_steps(SPEC, 2)),
                              wire.Ack(robot_id=robot, episode_id=ep, seq=0, status="stored")))
    real, calls = ing.store.write_chunks, []

    def picky(chunks):
        calls.append(len(chunks))
        if any(c.episode_id == "poison" for c in chunks):
            raise ValueError("pyarrow could not build this table")
        return real(chunks)

    monkeypatch.setattr(ing.store, "write_chunks", picky)
    ing._commit(batch)
    assert calls == [3, 1, 1, 1]
    assert batch[0].reply.code == "unstorable"
    assert [p.reply.status for p in batch[1:]] == ["stored", "stored"]
    assert ing.store.has("robot-2", "honest", 0) and ing.store.has("robot-3", "also", 0)
    assert not list((tmp_path / "store/staging").rglob(".tmp-*"))

"""Sharded ingest: two ingest processes share one episode store; robots stream to their shard,
and when one shard is SIGKILLed its robots move to the other and resend their spools. Every
episode ends complete exactly once, identical to what was sent."""

import dataclasses
import signal
import uuid

import pandas as pd
import pytest

from tests.helpers import (
    RawClient,
    ThreadIngest,
    assert_same_steps,
    cli_process,
    free_port,
    ingest_config,
    kill,
    sender_config,
    wait_for,
)
from vlac.cloud.store import open_episode_store
from vlac.edge.transport.recorder import EpisodeRecorder
from vlac.edge.transport.sender import Sender, SenderConfig
from vlac.shared import wire
from vlac.shared.config import ConfigError
from vlac.shared.episode import concat_steps, make_chunk, synthetic_steps
from vlac.shared.objstore import S3ObjectStore
from vlac.shared.shards import home_shard, parse_shard

SPEC = wire.DEFAULT_SPEC
TASK = "open the drawer"


def test_a_robots_shard_is_its_pin_or_a_stable_hash_of_its_id(tmp_path):
    ends = ["tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"]
    base = {"server_public_key": tmp_path / "k", "robot_secret_key": tmp_path / "s"}
    assert [home_shard(f"robot-{i}", 2) for i in range(4)] == [1, 1, 1, 0]  # never changes
    assert SenderConfig(robot_id="robot-3", ingest_endpoints=ends, **base).shard() == 0
    assert SenderConfig(robot_id="robot-1", ingest_endpoints=ends, **base).shard() == 1
    pinned = SenderConfig(robot_id="robot-1", ingest_endpoints=ends, ingest_shard=0, **base)
    assert pinned.shard() == 0 and pinned.endpoints() == ends
    assert SenderConfig(robot_id="robot-1", **base).endpoints() == ["tcp://127.0.0.1:5555"]
    with pytest.raises(ConfigError, match="`ingest_shard`: 2 is not a shard"):
        SenderConfig(robot_id="robot-1", ingest_endpoints=ends, ingest_shard=2, **base)
    with pytest.raises(ConfigError, match="`ingest_endpoints`: 'localhost:1'"):
        SenderConfig(robot_id="robot-1", ingest_endpoints=["localhost:1"], **base)
    assert parse_shard("1/2") == (1, 2) and parse_shard("") is None
    with pytest.raises(ValueError, match="K/N"):
        parse_shard("2/2")


def test_a_chunk_one_shard_stored_is_a_duplicate_at_the_other(tmp_path, keyring):
    store = tmp_path / "store"
    parts = [synthetic_steps(SPEC, 3, start_step=i * 3) for i in range(3)]

    def chunk(seq):
        final = wire.Outcome(success=True, n_chunks=3, n_steps=9) if seq == 2 else None
        return wire.encode(make_chunk("robot-1", "ep-1", seq, TASK, parts[seq], final,
                                      first_step=seq * 3))

    a_cfg = dataclasses.replace(ingest_config(keyring, store), shard="0/2")
    b_cfg = dataclasses.replace(ingest_config(keyring, store), shard="1/2")
    with ThreadIngest(a_cfg) as a, ThreadIngest(b_cfg) as b:
        to_a = RawClient(keyring, "robot-1", a.address)
        to_b = RawClient(keyring, "robot-1", b.address)
        try:
            assert to_a.handshake().ingest_id.startswith("ingest-shard0of2-")
            assert [to_a.request(chunk(s)).status for s in (0, 1)] == ["stored", "stored"]
            assert to_b.handshake().accepted  # any shard takes any robot
            # the robot moved: it resends chunk 1 (its ack was lost) and sends the last one
            assert [to_b.request(chunk(s)).status for s in (1, 2)] == ["duplicate", "stored"]
            # and back: shard 0's index is behind, the store is not
            assert [to_a.request(chunk(s)).status for s in (0, 2)] == ["duplicate", "duplicate"]
        finally:
            to_a.close()
            to_b.close()
    reader = open_episode_store(store, read_only=True)
    assert [e["n_steps"] for e in reader.list_episodes()] == [9]
    assert reader.incomplete() == [] and not list((store / "staging").glob("*/*"))
    assert_same_steps(reader.load_episode("robot-1", "ep-1").steps, concat_steps(parts))


@pytest.fixture(params=["folder", "s3"])
def store_root(request, tmp_path, monkeypatch):
    if request.param == "folder":
        return tmp_path / "store"
    ep = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ep["access_key"])  # the ingest processes too
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ep["secret_key"])
    bucket = f"shards-{uuid.uuid4().hex[:8]}"
    S3ObjectStore(bucket, endpoint_url=ep["endpoint"], create_bucket=True)
    return f"s3://{bucket}/fleet?endpoint={ep['endpoint']}"


def _shard(kr, store_root, port, k, log):
    return cli_process("ingest", "serve", "--bind", f"tcp://127.0.0.1:{port}",
                       "--store-root", str(store_root), "--shard", f"{k}/2",
                       "--server-secret-key", str(kr.server_secret),
                       "--allowed-keys-dir", str(kr.allowed), "--status-every-s", "0", log=log)


# robot-3 belongs to shard 0 by its id, robot-0 is pinned there; robots 1 and 2 hash to 1
ROBOTS = {"robot-3": -1, "robot-0": 0, "robot-1": -1, "robot-2": -1}


def test_a_killed_shards_robots_move_and_lose_or_duplicate_nothing(store_root, tmp_path,
                                                                     keyring):
    ports = [free_port(), free_port()]
    logs = [tmp_path / "shard0.log", tmp_path / "shard1.log"]
    shards = [_shard(keyring, store_root, ports[k], k, logs[k]) for k in (0, 1)]
    ends = [f"tcp://127.0.0.1:{p}" for p in ports]
    sent: dict[tuple[str, str], object] = {}
    try:
        for log in logs:  # robots fail over after 2 s: let both shards start first
            wait_for(lambda log=log: "ingest listening" in log.read_text(), 60, f"{log.name}")
        senders = {}
        for robot, pin in ROBOTS.items():
            cfg = sender_config(keyring, robot, ends[0], tmp_path / f"spool-{robot}",
                                ingest_endpoints=ends, ingest_shard=pin, failover_s=2.0,
                                ack_timeout_s=1.0, handshake_timeout_s=0.5)
            senders[robot] = Sender(cfg, cfg.make_spool(), SPEC).start()
        assert {r: s.shard for r, s in senders.items()} == \
            {"robot-3": 0, "robot-0": 0, "robot-1": 1, "robot-2": 1}
        half = {}
        for robot, s in senders.items():  # one whole episode, and half of the next
            _end(_record(s, robot, 0), sent)
            half[robot] = _record(s, robot, 1, n_parts=3)  # its chunks 0 and 1 spooled
        for s in senders.values():
            assert s.wait_drained(30), s.stats
        arriving = open_episode_store(store_root, read_only=True).incomplete()
        assert sorted((i["robot_id"], i["chunks"]) for i in arriving) == \
            sorted((r, [0, 1]) for r in ROBOTS)
        kill(shards[0])  # SIGKILL: shard 0 stored half of its robots' episodes
        for robot, s in senders.items():
            _end(half[robot], sent)
            _end(_record(s, robot, 2), sent)
        for s in senders.values():
            assert s.wait_drained(60), s.stats
        for robot, s in senders.items():
            s.stop()
            s.raise_if_failed()
            moved = ROBOTS[robot] == 0 or robot == "robot-3"
            assert (s.stats.failovers, s.shard) == ((1, 1) if moved else (0, 1)), robot
    finally:
        for p in shards:
            kill(p, signal.SIGTERM)
    assert "robot robot-3 belongs to shard 0 by its id and came to shard 1" in \
        logs[1].read_text()
    _assert_exactly_once(store_root, sent)


def _record(sender, robot, e, n_parts=4):
    """An episode of 4 parts of 4 steps (4 chunks); the first ``n_parts`` recorded."""
    rec = EpisodeRecorder(sender.spool, robot, TASK, chunk_steps=4)
    parts = [synthetic_steps(SPEC, 4, start_step=i * 4, seed=e) for i in range(4)]
    for p in parts[:n_parts]:
        rec.add(p)
    return rec, parts, n_parts


def _end(recording, sent):
    rec, parts, n_parts = recording
    for p in parts[n_parts:]:
        rec.add(p)
    rec.end(success=True)
    sent[(rec.robot_id, rec.episode_id)] = concat_steps(parts)


def _assert_exactly_once(store_root, sent):
    reader = open_episode_store(store_root, read_only=True)
    eps = reader.list_episodes()
    assert sorted((e["robot_id"], e["episode_id"]) for e in eps) == sorted(sent)
    assert all(e["n_chunks"] == 4 and e["n_steps"] == 16 for e in eps)
    assert reader.incomplete() == []
    for (robot, ep_id), steps in sent.items():
        assert_same_steps(reader.load_episode(robot, ep_id).steps, steps)
    if not isinstance(store_root, str):  # every chunk file of every episode, once
        df = pd.read_parquet(store_root / "episodes", columns=["robot_id", "episode_id", "step"])
        assert len(df) == 16 * len(sent)
        assert not df.duplicated(["robot_id", "episode_id", "step"]).any()
        assert len(list((store_root / "episodes").glob("*/*/chunk-*.parquet"))) == 4 * len(sent)

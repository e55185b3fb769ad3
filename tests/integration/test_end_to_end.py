"""Faults across real processes and sockets: whatever dies, duplicates, drops or reorders,
the store ends with every episode exactly once, identical to what was sent."""

import random
import signal
import threading
import time

import pandas as pd

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
from vlac.cloud.store.episodes import EpisodeStore
from vlac.edge.transport.recorder import EpisodeRecorder
from vlac.edge.transport.sender import Sender
from vlac.shared import wire
from vlac.shared.episode import concat_steps, make_chunk, synthetic_steps

SPEC = wire.DEFAULT_SPEC


def ingest_args(kr, store, port):
    return ["ingest", "serve", "--bind", f"tcp://127.0.0.1:{port}", "--store-root", str(store),
            "--server-secret-key", str(kr.server_secret), "--allowed-keys-dir",
            str(kr.allowed), "--status-every-s", "0"]


def complete_count(store_root):
    return len(list((store_root / "episodes").glob("robot_id=*/episode_id=*/_episode.json")))


def assert_exactly_once(store_root):
    df = pd.read_parquet(store_root / "episodes", columns=["step", "robot_id", "episode_id"])
    assert not df.duplicated(["robot_id", "episode_id", "step"]).any()
    return df


def test_ingest_killed_mid_stream_and_restarted(tmp_path, keyring):
    port = free_port()
    store_root = tmp_path / "store"
    log = tmp_path / "ingest.log"
    proc = cli_process(*ingest_args(keyring, store_root, port), log=log)
    cfg = sender_config(keyring, "robot-0", f"tcp://127.0.0.1:{port}", tmp_path / "spool",
                        ack_timeout_s=1.0)
    spool = cfg.make_spool()
    sent = {}
    n_episodes = 8
    try:
        with Sender(cfg, spool, SPEC) as sender:
            for e in range(n_episodes):
                rec = EpisodeRecorder(spool, "robot-0", "open the drawer", chunk_steps=4)
                parts = [synthetic_steps(SPEC, 4, start_step=i * 4, seed=e) for i in range(4)]
                for p in parts:
                    rec.add(p)
                    time.sleep(0.02)
                rec.end(success=True)
                sent[rec.episode_id] = concat_steps(parts)
                if e == 2:  # ingest dies with chunks in flight ...
                    wait_for(lambda: complete_count(store_root) >= 1, 30, "first episode")
                    kill(proc)
                if e == 4:  # ... and comes back on the same port
                    proc = cli_process(*ingest_args(keyring, store_root, port), log=log)
            assert sender.wait_drained(60), f"spool left {spool.depth}: {sender.stats}"
            assert sender.stats.handshakes >= 2
    finally:
        kill(proc, signal.SIGTERM)
    store = EpisodeStore(store_root)
    assert {e["episode_id"] for e in store.list_episodes()} == set(sent)
    assert store.incomplete() == []
    for ep_id, steps in sent.items():
        assert_same_steps(store.load_episode("robot-0", ep_id).steps, steps)
    assert len(assert_exactly_once(store_root)) == n_episodes * 16


def test_sender_killed_mid_episode_and_restarted(tmp_path, keyring):
    port = free_port()
    store_root = tmp_path / "store"
    spool_dir = tmp_path / "spool"
    ingest = cli_process(*ingest_args(keyring, store_root, port), log=tmp_path / "ingest.log")
    robot_args = [
        "edge", "synthetic", "--sender.robot-id", "robot-2",
        "--sender.ingest-address", f"tcp://127.0.0.1:{port}",
        "--sender.robot-secret-key", str(keyring.robot_secret("robot-2")),
        "--sender.server-public-key", str(keyring.server_public),
        "--sender.spool-dir", str(spool_dir), "--sender.ack-timeout-s", "1",
        "--steps-per-episode", "32", "--chunk-steps", "8", "--seed", "5", "--quiet"]
    try:
        robot = cli_process(*robot_args, "--episodes", "40", "--step-hz", "400",
                            log=tmp_path / "robot.log")
        wait_for(lambda: complete_count(store_root) >= 2, 60, "two episodes stored")
        ingest.send_signal(signal.SIGSTOP)  # acks stop coming: chunks pile up in the spool
        time.sleep(0.4)
        kill(robot)  # SIGKILL mid-episode: no flush, no goodbye
        spooled = {(p.name.split("__")[1], int(p.name.split("__")[2][:7]))
                   for p in spool_dir.glob("0*.chunk")}
        assert spooled, "the kill should leave unacknowledged chunks in the spool"
        ingest.send_signal(signal.SIGCONT)
        # restart: the new process resumes the spool and sends what the old one left
        again = cli_process(*robot_args, "--episodes", "0", log=tmp_path / "robot.log")
        assert again.wait(60) == 0, (tmp_path / "robot.log").read_text()[-2000:]
        assert not list(spool_dir.glob("0*.chunk"))
    finally:
        ingest.send_signal(signal.SIGCONT)
        kill(ingest, signal.SIGTERM)
    store = EpisodeStore(store_root)
    for ep_id, seq in spooled:
        assert store.has("robot-2", ep_id, seq), (ep_id, seq)
    eps = store.list_episodes()
    assert len(eps) >= 2
    for info in eps:  # every complete episode is exactly what the robot generated
        ep = store.load_episode("robot-2", info["episode_id"])
        assert len(ep) == 32
        first = ep.steps.images["corner"][0]
        matches = [k for k in range(40)
                   if (synthetic_steps(SPEC, 1, seed=5 * 1000 + k).images["corner"][0]
                       == first).all()]
        assert len(matches) == 1
        expected = concat_steps([synthetic_steps(SPEC, 8, start_step=s,
                                                 seed=5 * 1000 + matches[0])
                                 for s in range(0, 32, 8)])
        assert_same_steps(ep.steps, expected, timestamps=False)
    # the episode cut off by the kill stays incomplete; its chunks are a prefix
    for inc in store.incomplete():
        assert inc["chunks"] == list(range(len(inc["chunks"])))
        assert not inc["final_seen"]
    assert len(store.incomplete()) <= 1
    assert_exactly_once(store_root)


def test_duplicated_dropped_and_reordered_chunks(tmp_path, keyring):
    rng = random.Random(0)
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        c = RawClient(keyring, "robot-3", ingest.address)
        assert c.handshake().accepted
        episodes, messages = {}, []
        for e in range(4):
            parts = [synthetic_steps(SPEC, 3, start_step=3 * i, seed=e) for i in range(5)]
            episodes[f"ep-{e}"] = concat_steps(parts)
            for i, p in enumerate(parts):
                final = wire.Outcome(success=e % 2 == 0, n_chunks=5, n_steps=15) \
                    if i == 4 else None
                messages.append(wire.encode(make_chunk("robot-3", f"ep-{e}", i, "press",
                                                       p, final, first_step=3 * i)))
        dropped = rng.sample(messages, 6)
        schedule = [m for m in messages if m not in dropped]
        schedule += rng.sample(schedule, 8)  # duplicates
        rng.shuffle(schedule)  # reordered
        schedule += dropped + dropped[:2]  # the dropped ones arrive late, twice for some
        statuses = [c.request(m).status for m in schedule]
        assert statuses.count("stored") == 20
        assert statuses.count("duplicate") == len(schedule) - 20
        c.close()
        store = ingest.store
        assert {e["episode_id"] for e in store.list_episodes()} == set(episodes)
        for ep_id, steps in episodes.items():
            assert_same_steps(store.load_episode("robot-3", ep_id).steps, steps)
    assert len(assert_exactly_once(tmp_path / "store")) == 60


def test_sender_resends_until_acked_and_duplicates_are_absorbed(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        # a slow store and an absurdly short ack timeout make the sender resend a lot
        write_chunks = ingest.store.write_chunks

        def slow_write(chunks):
            time.sleep(0.08)
            return write_chunks(chunks)

        ingest.store.write_chunks = slow_write
        cfg = sender_config(keyring, "robot-1", ingest.address, tmp_path / "spool",
                            ack_timeout_s=0.001, window=4)
        spool = cfg.make_spool()
        sent = {}
        with Sender(cfg, spool, SPEC) as sender:
            for e in range(3):
                rec = EpisodeRecorder(spool, "robot-1", "push", chunk_steps=2)
                parts = [synthetic_steps(SPEC, 2, start_step=2 * i, seed=e) for i in range(6)]
                for p in parts:
                    rec.add(p)
                rec.end(True)
                sent[rec.episode_id] = concat_steps(parts)
            assert sender.wait_drained(30)
        assert sender.stats.resent > 0 and sender.stats.duplicates > 0
        for ep_id, steps in sent.items():
            assert_same_steps(ingest.store.load_episode("robot-1", ep_id).steps, steps)
    assert len(assert_exactly_once(tmp_path / "store")) == 36


def test_many_robots_at_once(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        results = {}

        def robot(name):
            cfg = sender_config(keyring, name, ingest.address, tmp_path / name)
            spool = cfg.make_spool()
            with Sender(cfg, spool, SPEC) as s:
                for e in range(3):
                    rec = EpisodeRecorder(spool, name, f"task of {name}", chunk_steps=5)
                    rec.add(synthetic_steps(SPEC, 12, seed=e))
                    rec.end(True)
                results[name] = s.wait_drained(60)

        threads = [threading.Thread(target=robot, args=(f"robot-{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(results.values()) and len(results) == 4
        eps = ingest.store.list_episodes()
        assert len(eps) == 12
        assert {e["task"] for e in eps} == {f"task of robot-{i}" for i in range(4)}

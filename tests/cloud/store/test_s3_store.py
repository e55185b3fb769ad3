"""The episode store on a real S3 server (Ceph radosgw): the folder store's layout, bytes and
guarantees, with completion made atomic by a manifest written last and read first."""

import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import boto3
import pytest

from tests.helpers import (
    assert_same_steps,
    cli_process,
    free_port,
    kill,
    sender_config,
    wait_for,
)
from vlac.cloud.store import EpisodeStore, StoreUnavailable, open_episode_store, store_location
from vlac.cloud.store.s3 import S3EpisodeStore
from vlac.edge.transport.recorder import EpisodeRecorder
from vlac.edge.transport.sender import Sender
from vlac.infra.cli import main as vlac
from vlac.shared.config import ConfigError
from vlac.shared.episode import concat_steps, synthetic_steps
from vlac.shared.objstore import S3ObjectStore
from vlac.shared.wire import DEFAULT_SPEC, Outcome

SPEC = DEFAULT_SPEC
TASK = "open the drawer"


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket; returns (store URI, a raw boto3 client, bucket)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint["secret_key"])
    bucket = f"eps-{uuid.uuid4().hex[:8]}"
    S3ObjectStore(bucket, endpoint_url=s3_endpoint["endpoint"], create_bucket=True)
    client = boto3.client("s3", endpoint_url=s3_endpoint["endpoint"], region_name="us-east-1")
    return f"s3://{bucket}/fleet?endpoint={s3_endpoint['endpoint']}", client, bucket


def keys(s3, prefix=""):
    _, client, bucket = s3
    page = client.list_objects_v2(Bucket=bucket, Prefix="fleet/" + prefix)
    return sorted(o["Key"][len("fleet/"):] for o in page.get("Contents", []))


def parts_of(n_chunks, steps_per=5, seed=0):
    return [synthetic_steps(SPEC, steps_per, start_step=i * steps_per, seed=seed)
            for i in range(n_chunks)]


def write(store, robot, ep, parts, order=None, task=TASK):
    n, per = len(parts), len(parts[0])
    out = []
    for i in range(n) if order is None else order:
        final = (Outcome(success=True, n_chunks=n, n_steps=n * per, reason="success")
                 if i == n - 1 else None)
        out.append(store.write_chunk(robot, ep, i, task, parts[i], final, i * per))
    return out


def test_round_trip_is_the_folder_store_byte_for_byte(s3, tmp_path):
    uri, client, bucket = s3
    local, remote = EpisodeStore(tmp_path), open_episode_store(uri)
    assert isinstance(remote, S3EpisodeStore)
    parts = parts_of(4)
    for store in (local, remote):
        write(store, "r1", "e1", parts, order=[3, 1, 0])
        assert store.list_episodes() == [] and store.incomplete()[0]["chunks"] == [0, 1, 3]
        write(store, "r1", "e1", parts, order=[2])
    [a], [b] = local.list_episodes(), remote.list_episodes()
    assert {**a, "completed_at": 0} == {**b, "completed_at": 0}
    assert_same_steps(remote.load_episode("r1", "e1").steps, concat_steps(parts))
    assert_same_steps(remote.load_episode("r1", "e1").steps,
                      local.load_episode("r1", "e1").steps)
    cols = remote.load_columns("r1", "e1", ["step", "action"])
    assert cols["step"].tolist() == list(range(20)) and cols["action"].shape == (20, 4)
    prefix = "episodes/robot_id=r1/episode_id=e1/"
    assert keys(s3) == sorted([prefix + f"chunk-{i:07d}.parquet" for i in range(4)]
                              + [prefix + "_episode.json"])  # staging emptied, nothing else
    for i in range(4):  # the same Parquet bytes: one format, two stores
        body = client.get_object(Bucket=bucket, Key=f"fleet/{prefix}chunk-{i:07d}.parquet")
        assert body["Body"].read() == (local.episode_dir("r1", "e1")
                                       / f"chunk-{i:07d}.parquet").read_bytes()


def test_a_stored_chunk_is_never_stored_again(s3):
    uri, client, bucket = s3
    w1, w2 = open_episode_store(uri), open_episode_store(uri)
    parts = parts_of(2)
    assert not w2.has("r1", "e1", 0)  # w2 looked: nothing there yet
    assert write(w1, "r1", "e1", parts, order=[0]) == [True]
    assert write(w1, "r1", "e1", parts, order=[0]) == [False]
    key = "fleet/staging/r1/e1/chunk-0000000.parquet"
    stored_at = client.head_object(Bucket=bucket, Key=key)["LastModified"]
    # w2's index predates the chunk: the server's If-None-Match refuses the second PUT
    assert write(w2, "r1", "e1", parts, order=[0]) == [False]
    assert client.head_object(Bucket=bucket, Key=key)["LastModified"] == stored_at
    assert write(open_episode_store(uri), "r1", "e1", parts, order=[0]) == [False]
    assert write(w2, "r1", "e1", parts, order=[1]) == [True]  # w2 completes it
    assert write(w1, "r1", "e1", parts) == [False, False]
    assert len(keys(s3, "episodes/")) == 3 and keys(s3, "staging/") == []
    [info] = open_episode_store(uri, read_only=True).list_episodes()
    assert info["n_chunks"] == 2 and info["n_steps"] == 10


def test_an_incomplete_episode_is_invisible_to_readers(s3):
    uri, client, bucket = s3
    writer = open_episode_store(uri)
    parts = parts_of(3)
    write(writer, "r1", "e1", parts, order=[0, 2])
    # as if a writer died between copying chunks to episodes/ and writing the manifest
    for i in (0, 2):
        client.copy_object(Bucket=bucket,
                           Key=f"fleet/episodes/robot_id=r1/episode_id=e1/chunk-{i:07d}.parquet",
                           CopySource={"Bucket": bucket,
                                       "Key": f"fleet/staging/r1/e1/chunk-{i:07d}.parquet"})
    reader = open_episode_store(uri, read_only=True)
    assert reader.list_episodes() == [] and not reader.is_complete("r1", "e1")
    with pytest.raises(KeyError, match="vlac store ls"):
        reader.load_episode("r1", "e1")
    [inc] = reader.incomplete()  # rebuilt from the objects' metadata
    assert inc["chunks"] == [0, 2] and inc["final_seen"] and inc["bytes"] > 0
    assert {**inc, "age_s": 0} == {**writer.incomplete()[0], "age_s": 0}
    assert reader.stats()["incomplete"] == 1 and reader.stats()["episodes"] == 0
    with pytest.raises(PermissionError, match="read-only"):
        write(reader, "r1", "e1", parts, order=[1])
    write(writer, "r1", "e1", parts, order=[1])
    assert [e["n_steps"] for e in reader.list_episodes()] == [15]


def test_a_reader_beside_a_writer_sees_only_complete_episodes(s3):
    uri, _, _ = s3
    writer, reader = open_episode_store(uri), open_episode_store(uri, read_only=True)
    n_episodes, done = 5, threading.Event()
    errors = []

    def produce():
        try:
            for e in range(n_episodes):
                write(writer, "r1", f"e{e}", parts_of(3, seed=e))
        except Exception as exc:  # surfaces in the assertion below
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=produce, daemon=True).start()
    seen = set()
    while not done.is_set() or len(seen) < n_episodes:
        for info in reader.list_episodes():
            ep = reader.load_episode("r1", info["episode_id"])
            assert len(ep) == info["n_steps"] == 15  # never part of one
            seen.add(info["episode_id"])
        assert not errors, errors
        if done.is_set() and len(seen) < n_episodes:
            assert len(reader.list_episodes()) == n_episodes
    assert seen == {f"e{e}" for e in range(n_episodes)}


_KILLED_WRITER = """
import os, signal, sys
from vlac.cloud.store.s3 import S3EpisodeStore
from vlac.shared.episode import synthetic_steps
from vlac.shared.wire import DEFAULT_SPEC, Outcome

put = S3EpisodeStore._put
def put_then_die(self, key, body, **kw):
    if key.endswith("_episode.json"):  # every chunk copied, the manifest not yet written
        os.kill(os.getpid(), signal.SIGKILL)
    return put(self, key, body, **kw)
S3EpisodeStore._put = put_then_die
store = S3EpisodeStore(sys.argv[1])
for seq in (0, 1):  # an episode still arriving
    store.write_chunk("r1", "half", seq, "t", synthetic_steps(DEFAULT_SPEC, 5, start_step=seq * 5),
                      None, seq * 5)
for seq in range(3):
    store.write_chunk("r1", "whole", seq, "t", synthetic_steps(DEFAULT_SPEC, 5, start_step=seq * 5),
                      Outcome(success=True, n_chunks=3, n_steps=15) if seq == 2 else None, seq * 5)
"""


def test_a_writer_killed_before_its_manifest_is_finished_by_the_next(s3):
    uri, _, _ = s3
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), uri],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(keys(s3, "episodes/")) == 3  # the copies, no manifest: readers see nothing
    assert open_episode_store(uri, read_only=True).list_episodes() == []
    store = open_episode_store(uri)  # a new writer: recovery completes "whole"
    [info] = store.list_episodes()
    assert info["episode_id"] == "whole" and info["n_steps"] == 15
    assert_same_steps(store.load_episode("r1", "whole").steps,
                      concat_steps([synthetic_steps(SPEC, 5, start_step=s * 5) for s in range(3)]))
    assert keys(s3, "staging/") == [f"staging/r1/half/chunk-{i:07d}.parquet" for i in (0, 1)]
    assert store.incomplete()[0]["chunks"] == [0, 1]
    assert not store.write_chunk("r1", "half", 1, "t", synthetic_steps(SPEC, 5, start_step=5),
                                 None, 5)
    assert store.write_chunk("r1", "half", 2, "t", synthetic_steps(SPEC, 5, start_step=10),
                             Outcome(success=False, n_chunks=3, n_steps=15), 10)
    assert sorted(e["episode_id"] for e in store.list_episodes()) == ["half", "whole"]
    assert len(keys(s3, "episodes/")) == 8 and keys(s3, "staging/") == []


def test_ingest_sigkilled_mid_stream_loses_and_duplicates_nothing(s3, tmp_path, keyring):
    uri, _, _ = s3
    port = free_port()
    args = ["ingest", "serve", "--bind", f"tcp://127.0.0.1:{port}", "--store-root", uri,
            "--server-secret-key", str(keyring.server_secret), "--allowed-keys-dir",
            str(keyring.allowed), "--status-every-s", "0"]
    log = tmp_path / "ingest.log"
    reader = open_episode_store(uri, read_only=True)
    proc = cli_process(*args, log=log)
    cfg = sender_config(keyring, "robot-0", f"tcp://127.0.0.1:{port}", tmp_path / "spool",
                        ack_timeout_s=1.0)
    spool, sent = cfg.make_spool(), {}
    try:
        with Sender(cfg, spool, SPEC) as sender:
            for e in range(5):
                rec = EpisodeRecorder(spool, "robot-0", TASK, chunk_steps=4)
                parts = [synthetic_steps(SPEC, 4, start_step=i * 4, seed=e) for i in range(4)]
                for p in parts:
                    rec.add(p)
                    time.sleep(0.02)
                if e == 1:  # ingest dies mid-episode, chunks of it stored, others in flight
                    wait_for(lambda: len(reader.list_episodes()) >= 1, 60,
                             f"first episode: {log.read_text()[-2000:]}")
                    kill(proc)
                rec.end(success=True)
                sent[rec.episode_id] = concat_steps(parts)
                if e == 2:  # ... and a new one starts on the same port
                    proc = cli_process(*args, log=log)
            assert sender.wait_drained(60), f"spool left {spool.depth}: {sender.stats}"
            assert sender.stats.handshakes >= 2
    finally:
        kill(proc, signal.SIGTERM)
    assert {e["episode_id"] for e in reader.list_episodes()} == set(sent)
    assert reader.incomplete() == [] and keys(s3, "staging/") == []
    for ep_id, steps in sent.items():
        assert_same_steps(reader.load_episode("robot-0", ep_id).steps, steps)
    assert len(keys(s3, "episodes/")) == 5 * (4 + 1)  # 4 chunks and a manifest each, once


def test_store_commands_and_lerobot_export_take_an_s3_uri(s3, tmp_path, capsys):
    uri, _, _ = s3
    store = open_episode_store(uri)
    write(store, "robot-0", "ep-7", parts_of(2))
    write(store, "robot-0", "ep-8", parts_of(3), order=[0])
    assert vlac(["store", "ls", "--root", uri, "--incomplete"]) == 0  # through Path flags
    out = capsys.readouterr().out
    assert "robot-0/ep-7" in out and "1 episodes, 10 steps" in out and "1 incomplete" in out
    assert vlac(["store", "show", "--root", uri, "--episode", "robot-0/ep-7"]) == 0
    assert "10 steps" in capsys.readouterr().out
    assert vlac(["store", "gc", "--root", uri, "--older-than", "0s"]) == 0
    assert "dropped 1 incomplete episodes" in capsys.readouterr().out
    assert keys(s3, "staging/") == []
    assert vlac(["demos", "export", "--root", uri, "--out", str(tmp_path / "lr")]) == 0
    assert "exported 1 episodes, 10 frames" in capsys.readouterr().out


def test_the_learner_reads_an_s3_store(s3):
    from vlac.cloud.learner.config import LearnerConfig
    from vlac.cloud.learner.episodes import EpisodeLoader

    uri, _, _ = s3
    parts = parts_of(2)
    write(open_episode_store(uri), "robot-0", "ep-1", parts)
    cfg = LearnerConfig(store_root=uri)  # a Path field: pathlib folds the URI's "//"
    store = open_episode_store(cfg.store_root, read_only=True)  # as the learner opens it
    assert isinstance(store, S3EpisodeStore)
    loader = EpisodeLoader(store, actor=None, camera="corner")
    [info] = loader.unconsumed(set())
    _, frames = loader.frames(info)
    assert (frames == concat_steps(parts).images["corner"]).all()
    assert loader.unconsumed({"robot-0/ep-1"}) == []


def test_a_task_too_long_for_s3_metadata_recovers_from_the_file(s3):
    uri, _, _ = s3
    long_task = "ouvrir le tiroir é" * 55  # ~1000 characters, escaped past S3's 2 KB
    write(open_episode_store(uri), "r1", "e1", parts_of(2), order=[0], task=long_task)
    again = open_episode_store(uri)
    assert again.incomplete()[0]["task"] == long_task
    write(again, "r1", "e1", parts_of(2), order=[1], task=long_task)
    assert again.load_episode("r1", "e1").task == long_task


def test_errors_name_the_uri_and_the_fix(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint["secret_key"])
    missing = f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/p?endpoint={s3_endpoint['endpoint']}"
    with pytest.raises(StoreUnavailable, match=r"does not exist at .*Create it") as exc:
        open_episode_store(missing)
    assert missing in str(exc.value)
    nowhere = f"s3://b/p?endpoint=http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable, match="cannot reach the S3 endpoint") as exc:
        open_episode_store(nowhere, read_only=True)
    assert nowhere in str(exc.value) and "?endpoint=" in str(exc.value)
    assert isinstance(exc.value, OSError)  # ingest answers it "retry", never "rejected"


def test_store_location_reads_folders_and_uris(tmp_path):
    from pathlib import Path

    uri = "s3://bucket/some/prefix?endpoint=http://127.0.0.1:7480"
    assert store_location(uri) == uri
    assert store_location(Path(uri)) == uri  # "s3:/bucket/...http:/127..." put back
    assert store_location(tmp_path) == tmp_path
    assert store_location(f"file://{tmp_path}") == tmp_path
    with pytest.raises(ConfigError, match="`root`: 'gs://b' is not an episode store"):
        store_location("gs://b", "root")

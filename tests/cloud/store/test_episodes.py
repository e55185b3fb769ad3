import json
import os

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from tests.helpers import assert_same_steps
from vlac.cloud.store.episodes import EpisodeStore
from vlac.shared.episode import concat_steps as concat
from vlac.shared.episode import synthetic_steps
from vlac.shared.wire import DEFAULT_SPEC, Outcome, WireError

SPEC = DEFAULT_SPEC


def write_episode(store, robot, ep, n_chunks, steps_per=5, order=None, seed=0):
    parts = [synthetic_steps(SPEC, steps_per, start_step=i * steps_per, seed=seed)
             for i in range(n_chunks)]
    for i in order or range(n_chunks):
        final = (Outcome(success=True, n_chunks=n_chunks, n_steps=n_chunks * steps_per)
                 if i == n_chunks - 1 else None)
        store.write_chunk(robot, ep, i, "open the drawer", parts[i], final, i * steps_per)
    return parts


def test_episode_assembles_out_of_order_and_moves_atomically(tmp_path):
    store = EpisodeStore(tmp_path)
    parts = write_episode(store, "r1", "e1", 4, order=[3, 1, 0])
    assert store.list_episodes() == []  # chunk 2 missing: still staging
    assert store.incomplete()[0]["chunks"] == [0, 1, 3]
    store.write_chunk("r1", "e1", 2, "open the drawer", parts[2], None, 10)
    [info] = store.list_episodes()
    assert info["n_steps"] == 20 and info["outcome"]["success"]
    assert not (tmp_path / "staging/r1/e1").exists()
    ep = store.load_episode("r1", "e1")
    assert_same_steps(ep.steps, concat(parts))
    assert ep.task == "open the drawer"


def test_duplicates_are_not_written(tmp_path):
    store = EpisodeStore(tmp_path)
    parts = write_episode(store, "r1", "e1", 2, order=[0])
    assert store.write_chunk("r1", "e1", 0, "open the drawer", parts[0]) is False
    write_episode(store, "r1", "e1", 2, order=[1])
    # after completion every chunk of it is a duplicate
    assert store.has("r1", "e1", 0) and store.has("r1", "e1", 1)
    assert store.write_chunk("r1", "e1", 1, "open the drawer", parts[1]) is False
    assert len(list(store.episode_dir("r1", "e1").glob("chunk-*.parquet"))) == 2


def test_opens_with_pandas_and_pyarrow(tmp_path):
    store = EpisodeStore(tmp_path)
    write_episode(store, "r1", "e1", 2)
    write_episode(store, "r2", "e9", 3, seed=1)
    df = pd.read_parquet(tmp_path / "episodes")
    assert len(df) == 25
    assert set(df["robot_id"].astype(str)) == {"r1", "r2"}
    row = df[df["robot_id"] == "r2"].sort_values("step").iloc[7]
    img = np.frombuffer(row["image.corner"], np.uint8).reshape(128, 128, 3)
    np.testing.assert_array_equal(img, synthetic_steps(SPEC, 5, start_step=5, seed=1)
                                  .images["corner"][2])
    schema = ds.dataset(tmp_path / "episodes", partitioning="hive").schema
    assert json.loads(schema.field("image.corner").metadata[b"shape"]) == [128, 128, 3]


def test_images_are_stored_compressed(tmp_path):
    store = EpisodeStore(tmp_path)
    write_episode(store, "r1", "e1", 2, steps_per=16)
    raw = 32 * 128 * 128 * 3
    [info] = store.list_episodes()
    assert info["bytes"] < raw / 3


def test_recovery_rebuilds_index_and_finishes_complete_episodes(tmp_path, monkeypatch):
    store = EpisodeStore(tmp_path)
    write_episode(store, "r1", "partial", 3, order=[0, 2])
    # crash between the last chunk's write and the move to episodes/
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        write_episode(store, "r1", "done", 2)
    monkeypatch.setattr(os, "rename", real_rename)
    (tmp_path / "staging/r1/partial/.tmp-chunk-0000001.parquet").write_bytes(b"half")
    again = EpisodeStore(tmp_path)
    assert [e["episode_id"] for e in again.list_episodes()] == ["done"]
    assert again.has("r1", "partial", 2) and not again.has("r1", "partial", 1)
    assert not list((tmp_path / "staging/r1/partial").glob(".tmp-*"))
    assert again.incomplete()[0]["final_seen"] is True


def test_bad_ids_cannot_escape_the_store(tmp_path):
    store = EpisodeStore(tmp_path)
    with pytest.raises(WireError, match="valid id"):
        store.write_chunk("../etc", "e", 0, "t", synthetic_steps(SPEC, 1))


def test_load_missing_episode_says_how_to_list(tmp_path):
    with pytest.raises(KeyError, match="vlac store ls"):
        EpisodeStore(tmp_path).load_episode("r", "e")


def test_read_only_reader_leaves_staging_to_the_writer(tmp_path):
    writer = EpisodeStore(tmp_path)
    write_episode(writer, "r1", "e1", 2)
    write_episode(writer, "r1", "e2", 3, order=[0, 1])  # still arriving
    in_flight = tmp_path / "staging/r1/e2/.tmp-chunk-0000002.parquet"
    in_flight.write_bytes(b"being written by ingest")
    reader = EpisodeStore(tmp_path, read_only=True)
    assert [e["episode_id"] for e in reader.list_episodes()] == ["e1"]
    assert len(reader.load_episode("r1", "e1")) == 10
    assert in_flight.exists()  # a writing store's recovery would have deleted it
    with pytest.raises(PermissionError, match="read-only"):
        write_episode(reader, "r1", "e3", 1)

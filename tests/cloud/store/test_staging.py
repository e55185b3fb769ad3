"""The store refuses chunks that contradict their episode, so that every read path agrees on
every complete episode; and staging has a bounded life that never touches complete ones."""

import logging
import os
import time

import hypothesis.strategies as hs
import pytest
from hypothesis import HealthCheck, given, settings
from rich.console import Console

from tests.helpers import read_paths_agree
from vlac.cloud.store.cli import StoreGcConfig, StoreLsConfig, gc_main, ls_main
from vlac.cloud.store.episodes import ChunkWrite, EpisodeStore, StoreBusy
from vlac.shared import wire
from vlac.shared.config import ConfigError
from vlac.shared.episode import make_chunk, synthetic_steps
from vlac.shared.wire import DEFAULT_SPEC as DEFAULT
from vlac.shared.wire import Outcome, RobotSpec, WireError

SPEC = RobotSpec(cameras={"c": (4, 4, 3)}, proprio_dim=2, action_dim=2,
                 action_low=(-1.0, -1.0), action_high=(1.0, 1.0))


def chunk(ep, seq, first, n, n_chunks=None, n_steps=None, robot="r1", task="push"):
    final = None if n_chunks is None else Outcome(success=True, n_chunks=n_chunks,
                                                  n_steps=n_steps or first + n)
    return ChunkWrite(robot, ep, seq, task, synthetic_steps(SPEC, n, start_step=first),
                      final, first)


@pytest.mark.parametrize("bad, match", [
    # a second final chunk with a smaller n_chunks than the first
    (chunk("e", 1, 5, 5, n_chunks=2), "second final chunk"),
    # a seq beyond the final chunk's n_chunks
    (chunk("e", 7, 35, 5), "says 4 chunks but seq 7"),
    # steps that overlap chunk 0's
    (chunk("e", 1, 3, 5), "overlap or come out of order with chunk 0"),
    # steps beyond the final chunk's n_steps
    (chunk("e", 2, 18, 5), "says 20 steps but steps up to 23"),
    # a final chunk whose n_chunks is not seq + 1
    (chunk("e", 2, 10, 5, n_chunks=5, n_steps=20), "must say 3 chunks"),
    # the task of an episode cannot change
    (chunk("e", 1, 5, 5, task="open the drawer"), "began with task 'push'"),
])
def test_contradicting_chunks_are_refused_and_reads_agree(tmp_path, bad, match):
    store = EpisodeStore(tmp_path, fsync=False)
    assert store.write_chunks([chunk("e", 0, 0, 5), chunk("e", 3, 15, 5, n_chunks=4)]) \
        == [True, True]
    [refused] = store.write_chunks([bad])
    assert isinstance(refused, WireError) and match in str(refused)
    assert not store.has("r1", "e", bad.seq) or bad.seq in (0, 3)
    assert store.write_chunks([chunk("e", 1, 5, 5), chunk("e", 2, 10, 5)]) == [True, True]
    assert read_paths_agree(tmp_path) == 1
    assert len(list(store.episode_dir("r1", "e").glob("chunk-*.parquet"))) == 4


def test_contradictions_inside_one_batch_refuse_the_later_chunk(tmp_path):
    store = EpisodeStore(tmp_path, fsync=False)
    written = store.write_chunks([chunk("e", 0, 0, 4), chunk("e", 1, 2, 4),
                                  chunk("e", 1, 4, 4, n_chunks=2)])
    assert written[0] is True and isinstance(written[1], WireError) and written[2] is True
    assert read_paths_agree(tmp_path) == 1


def test_a_gap_cannot_complete_an_episode(tmp_path):
    store = EpisodeStore(tmp_path, fsync=False)
    store.write_chunks([chunk("e", 0, 0, 5), chunk("e", 2, 12, 3, n_chunks=3, n_steps=15)])
    [gap] = store.write_chunks([chunk("e", 1, 5, 5)])  # steps 10 and 11 would be missing
    assert "chunk 2 starting at step 12 where the chunks before it end at 10" in str(gap)
    assert store.list_episodes() == []
    assert store.write_chunks([chunk("e", 1, 5, 7)]) == [True]
    assert read_paths_agree(tmp_path) == 1


def test_chunk_zero_starts_at_step_zero(tmp_path):
    store = EpisodeStore(tmp_path, fsync=False)
    with pytest.raises(WireError, match="chunk 0 must start at step 0"):
        store.write_chunk("r1", "e", 0, "push", synthetic_steps(SPEC, 3), None, 2)


def test_ingest_refuses_a_contradicting_chunk_by_name(tmp_path, keyring):
    from tests.cloud.ingest.test_service import chunk_bytes
    from tests.helpers import RawClient, ThreadIngest, ingest_config

    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        c = RawClient(keyring, "robot-1", ingest.address)
        c.handshake()
        assert c.request(chunk_bytes(seq=0, final=False)).status == "stored"
        overlapping = make_chunk("robot-1", "ep-1", 1, "push", synthetic_steps(DEFAULT, 3),
                                 None, first_step=1)  # chunk 0 holds steps 0-2
        err = c.request(wire.encode(overlapping))
        assert err.code == "contradicts" and err.field == "first_step" and err.seq == 1
        assert c.request(chunk_bytes(seq=1)).status == "stored"
        c.close()
        assert read_paths_agree(tmp_path / "store") == 1
        assert ingest.robots["robot-1"].errors["contradicts"] == 1


# ------------------------------------------------------------------ property: any order
_writes = hs.lists(hs.tuples(hs.integers(0, 4),       # seq
                             hs.integers(0, 14),      # first_step
                             hs.integers(1, 5),       # steps
                             hs.booleans(),           # final
                             hs.integers(-2, 2)),     # final's n_steps minus the true end
                   min_size=1, max_size=12)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=_writes, batch=hs.integers(1, 4))
def test_any_sequence_of_chunks_leaves_a_self_consistent_store(tmp_path_factory, writes,
                                                               batch):
    root = tmp_path_factory.mktemp("store")
    store = EpisodeStore(root, fsync=False)
    todo = [chunk("e", seq, first, n, n_chunks=seq + 1 if final else None,
                  n_steps=max(1, first + n + extra) if final else None)
            for seq, first, n, final, extra in writes]
    for i in range(0, len(todo), batch):
        for w in store.write_chunks(todo[i:i + batch]):
            assert w in (True, False) or isinstance(w, WireError)
    read_paths_agree(root)
    again = EpisodeStore(root, fsync=False)  # recovery rebuilds the same state
    assert [i["chunks"] for i in again.incomplete()] == \
        [i["chunks"] for i in store.incomplete()]


# ------------------------------------------------------------------ staging's bounded life
def _age(root, robot, ep, seconds):
    then = time.time() - seconds
    for f in (root / "staging" / robot / ep).iterdir():
        os.utime(f, (then, then))


def _old_store(root):
    """One complete episode (old files), one abandoned for 2 h, one abandoned for 1 min."""
    store = EpisodeStore(root, fsync=False)
    store.write_chunks([chunk("done", 0, 0, 3), chunk("done", 1, 3, 2, n_chunks=2)])
    store.write_chunks([chunk("old", 0, 0, 3), chunk("old", 1, 3, 3)])
    store.write_chunks([chunk("new", 0, 0, 3)])
    _age(root, "r1", "old", 7200)
    then = time.time() - 10 * 86400
    for f in store.episode_dir("r1", "done").iterdir():
        os.utime(f, (then, then))
    return EpisodeStore(root, fsync=False)  # reopened: ages come from the files


def test_gc_drops_only_what_stayed_incomplete_too_long(tmp_path, caplog):
    store = _old_store(tmp_path)
    ages = {i["episode_id"]: i for i in store.incomplete()}
    assert ages["old"]["age_s"] > 7000 and ages["new"]["age_s"] < 600
    assert ages["old"]["bytes"] > 0 and ages["old"]["chunks"] == [0, 1]
    with caplog.at_level(logging.WARNING, "vlac.cloud.store.episodes"):
        dropped = store.collect_staging(3600)
    assert [d["episode_id"] for d in dropped] == ["old"]
    assert "dropped incomplete episode r1/old" in caplog.text
    assert not (tmp_path / "staging/r1/old").exists()
    assert [i["episode_id"] for i in store.incomplete()] == ["new"]
    assert store.collect_staging(0) and store.incomplete() == []  # age 0: all incomplete
    assert [e["episode_id"] for e in store.list_episodes()] == ["done"]
    assert len(store.load_episode("r1", "done")) == 5  # complete: never touched


def test_store_gc_cli_lists_then_drops_and_respects_a_running_ingest(tmp_path):
    _old_store(tmp_path)
    console = Console(width=150, record=True)
    ls_main(StoreLsConfig(root=tmp_path, incomplete=True), console)
    out = console.export_text()
    assert "r1/old" in out and "2.0h" in out and "2 incomplete" in out
    gc_main(StoreGcConfig(root=tmp_path, older_than="1h", dry_run=True), console)
    assert (tmp_path / "staging/r1/old").exists()
    held = EpisodeStore(tmp_path, fsync=False)
    with held.writer_lock(exclusive=False), pytest.raises(ConfigError, match="running ingest"):
        gc_main(StoreGcConfig(root=tmp_path, older_than="1h"), console)
    dropped = gc_main(StoreGcConfig(root=tmp_path, older_than="1h"), console)
    assert [d["episode_id"] for d in dropped] == ["old"]
    assert "dropped 1 incomplete episodes" in console.export_text()
    assert EpisodeStore(tmp_path, read_only=True).list_episodes()[0]["episode_id"] == "done"
    with pytest.raises(ConfigError, match="not a duration"):
        StoreGcConfig(root=tmp_path, older_than="soon")


def test_writer_lock_keeps_gc_and_ingest_apart(tmp_path):
    a, b = EpisodeStore(tmp_path), EpisodeStore(tmp_path)
    with a.writer_lock(exclusive=False), b.writer_lock(exclusive=False):
        pass  # two ingests (shards) may share a store
    with a.writer_lock(exclusive=True), pytest.raises(StoreBusy, match="garbage-collected"), \
            b.writer_lock(exclusive=False):
        pass


def test_ingest_collects_abandoned_episodes_itself(tmp_path, keyring):
    from tests.helpers import ThreadIngest, ingest_config, wait_for

    _old_store(tmp_path / "store")
    cfg = ingest_config(keyring, tmp_path / "store")
    cfg.staging_max_age_s = 3600
    with ThreadIngest(cfg) as ingest:
        wait_for(lambda: not (tmp_path / "store/staging/r1/old").exists(), timeout=10)
        assert [i["episode_id"] for i in ingest.store.incomplete()] == ["new"]
        assert [e["episode_id"] for e in ingest.store.list_episodes()] == ["done"]

import logging
import threading
import time

import pytest

from vlac.edge.transport.spool import Spool, SpoolFull


def test_put_persists_across_restart_in_order(tmp_path):
    s = Spool(tmp_path)
    for i in range(5):
        s.put("ep-a" if i < 3 else "ep-b", i, f"chunk{i}".encode())
    assert s.depth == 5 and s.nbytes == sum(len(f"chunk{i}") for i in range(5))
    s.remove("ep-a", 1)
    again = Spool(tmp_path)  # a new process finds what the old one left
    assert [(e.episode_id, e.seq) for e in again.pending()] == \
        [("ep-a", 0), ("ep-a", 2), ("ep-b", 3), ("ep-b", 4)]
    assert again.read(again.pending()[0]) == b"chunk0"
    again.put("ep-c", 0, b"new")  # counter continues after the old files
    assert again.pending()[-1].episode_id == "ep-c"


def test_half_written_file_is_discarded_on_restart(tmp_path):
    s = Spool(tmp_path)
    s.put("ep", 0, b"done")
    (tmp_path / ".tmp-000000000001__ep__0000001.chunk").write_bytes(b"half")
    again = Spool(tmp_path)
    assert [e.seq for e in again.pending()] == [0]
    assert not list(tmp_path.glob(".tmp-*"))


def test_duplicate_put_is_idempotent(tmp_path):
    s = Spool(tmp_path)
    s.put("ep", 0, b"x")
    s.put("ep", 0, b"x")
    assert s.depth == 1


def test_exactly_full_then_error(tmp_path):
    s = Spool(tmp_path, max_chunks=3, on_full="error")
    for i in range(3):
        s.put("ep", i, b"12345")  # exactly full is fine
    with pytest.raises(SpoolFull, match=r"is full .*3 chunks.*on_full"):
        s.put("ep", 3, b"12345")
    assert s.depth == 3


def test_byte_limit(tmp_path):
    s = Spool(tmp_path, max_bytes=10, on_full="error")
    s.put("ep", 0, b"x" * 10)
    with pytest.raises(SpoolFull):
        s.put("ep", 1, b"y")
    with pytest.raises(SpoolFull, match="larger than the whole spool"):
        Spool(tmp_path / "b", max_bytes=10).put("ep", 0, b"z" * 11)


def test_block_waits_for_an_ack(tmp_path):
    s = Spool(tmp_path, max_chunks=2, on_full="block", block_timeout_s=10)
    s.put("ep", 0, b"a")
    s.put("ep", 1, b"b")
    threading.Timer(0.3, lambda: s.remove("ep", 0)).start()
    t0 = time.monotonic()
    s.put("ep", 2, b"c")
    assert time.monotonic() - t0 >= 0.25
    assert [e.seq for e in s.pending()] == [1, 2]


def test_block_times_out_with_a_clear_error(tmp_path):
    s = Spool(tmp_path, max_chunks=1, on_full="block", block_timeout_s=0.2)
    s.put("ep", 0, b"a")
    with pytest.raises(SpoolFull, match="stayed full"):
        s.put("ep", 1, b"b")


def test_drop_oldest_drops_whole_episodes_and_says_so(tmp_path, caplog):
    s = Spool(tmp_path, max_chunks=4, on_full="drop_oldest")
    for i in range(3):
        s.put("old", i, b"o")
    s.put("new", 0, b"n")
    with caplog.at_level(logging.WARNING):
        s.put("new", 1, b"n")
    assert [e.key for e in s.pending()] == [("new", 0), ("new", 1)]
    assert s.dropped_chunks == 3
    assert "DROPPED episode old (3 chunks)" in caplog.text


def test_reject_keeps_the_chunk_and_the_reason(tmp_path):
    s = Spool(tmp_path)
    s.put("ep", 0, b"bad chunk")
    dest = s.reject("ep", 0, "not_finite (steps.proprio): contains NaN")
    assert s.depth == 0 and dest.read_bytes() == b"bad chunk"
    assert "NaN" in dest.with_suffix(".reason.txt").read_text()
    assert s.rejected() == [dest]
    assert Spool(tmp_path).depth == 0  # a rejected chunk is not resent after a restart


def test_bad_settings():
    with pytest.raises(ValueError, match="on_full"):
        Spool("/tmp/x-spool-never", on_full="explode")

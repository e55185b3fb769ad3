"""Several writers (ingest shards) on one episode store, folder or S3: each chunk is stored
once whoever writes it, and whoever stores an episode's last chunk completes it."""

import threading
import uuid

import pytest

from tests.helpers import assert_same_steps
from vlac.cloud.store import open_episode_store
from vlac.shared.episode import concat_steps, synthetic_steps
from vlac.shared.objstore import S3ObjectStore
from vlac.shared.wire import DEFAULT_SPEC, Outcome

SPEC = DEFAULT_SPEC
PARTS = [synthetic_steps(SPEC, 5, start_step=i * 5) for i in range(3)]


@pytest.fixture(params=["folder", "s3"])
def root(request, tmp_path, monkeypatch):
    if request.param == "folder":
        return tmp_path / "store"
    ep = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ep["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ep["secret_key"])
    bucket = f"shared-{uuid.uuid4().hex[:8]}"
    S3ObjectStore(bucket, endpoint_url=ep["endpoint"], create_bucket=True)
    return f"s3://{bucket}/fleet?endpoint={ep['endpoint']}"


def put(store, seq, ep="e1"):
    final = Outcome(success=True, n_chunks=3, n_steps=15) if seq == 2 else None
    return store.write_chunk("r1", ep, seq, "t", PARTS[seq], final, seq * 5)


def assert_whole(root, ep="e1"):
    reader = open_episode_store(root, read_only=True)
    assert [e["episode_id"] for e in reader.list_episodes()] == [ep]
    assert_same_steps(reader.load_episode("r1", ep).steps, concat_steps(PARTS))
    assert reader.incomplete() == []


def test_the_writer_of_the_last_chunk_completes_what_another_began(root):
    a, b = open_episode_store(root), open_episode_store(root)
    assert [put(a, 0), put(a, 1)] == [True, True]
    assert not put(b, 1)  # b looks the episode up before its first chunk of it
    assert put(b, 2)
    assert_whole(root)
    assert [put(a, 0), put(a, 2)] == [False, False]  # a's index is behind: the store decides
    assert open_episode_store(root).incomplete() == []  # and a left nothing in staging


def test_a_final_chunk_seen_first_by_one_writer_is_completed_by_the_other(root):
    a, b = open_episode_store(root), open_episode_store(root)
    assert [put(a, 2), put(a, 0)] == [True, True]
    assert put(b, 1)  # b found 0 and 2 in the store: it completes the episode
    assert_whole(root)
    assert not put(a, 1)


def test_one_chunk_written_by_two_writers_at_once_is_stored_once(root):
    writers = [open_episode_store(root) for _ in range(2)]
    for w in writers:
        assert not w.has("r1", "e1", 0)  # both looked: nothing there, so both will write
    start, results = threading.Barrier(2), []

    def race(w):
        start.wait()
        results.append(put(w, 0))

    threads = [threading.Thread(target=race, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [False, True]
    assert [put(writers[1], 1), put(writers[0], 2)] == [True, True]
    assert_whole(root)

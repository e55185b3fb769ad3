import threading

from vlac.shared.fsutil import write_atomic


def test_concurrent_writers_of_one_path_never_collide(tmp_path):
    # two threads saving one state file (an updater's thread and a swap) used to share one
    # temp name: one renamed it away and the other's rename failed
    path = tmp_path / "state.json"
    payloads = [f'{{"writer": {i}}}'.encode() * 200 for i in range(4)]
    errors = []

    def writer(data):
        try:
            for _ in range(200):
                write_atomic(path, data)
        except Exception as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_bytes() in payloads  # whole bytes of one writer, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left

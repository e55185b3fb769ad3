"""The updater's delta path (vlac.edge.fetch) against the real publisher and object store: a
robot on a delta base moves only the delta, and every way a delta can fail (tampered, wrong
result, not a base, no index, a forged index) ends in the whole artifact, downloaded by the
robot itself, with the reason logged and the version running with the manifest's sha256. The
channel is test_updater's hand-driven XPUB; the object store a folder, and radosgw once."""

import logging
import time

import msgspec
import pytest

from tests.edge.test_updater import Channel, start
from tests.helpers import wait_for
from vlac.cloud.fleet.publisher import artifact_keys, delta_key
from vlac.shared import delta
from vlac.shared import manifest as mf


@pytest.fixture
def channel(tmp_path):
    c = Channel(tmp_path)
    c.robots = []
    yield c
    for u in c.robots:
        u.stop()
        u.join(5)
    c.close()


def manifest(channel, version: int) -> mf.Manifest:
    return mf.decode(channel.publisher.store.get_bytes(artifact_keys(version)[1])).manifest


def runs(channel, r, version: int, seq: int) -> dict:
    """Send ``version`` as assignment ``seq``; once it runs, how it got there (checked to be
    the manifest's bytes)."""
    channel.send(channel.genuine(version, seq=seq))
    wait_for(lambda: r.running_version == version, 20, f"version {version}; error {r.error!r}")
    m = manifest(channel, version)
    assert mf.file_digest(r.running_path) == (m.sha256, m.size) and r.error == ""
    return r.last_update


def on_v1(channel, *versions):
    """Versions 1 and ``versions`` published; a robot running version 1."""
    channel.upload(1, *versions)
    r = start(channel)
    first = runs(channel, r, 1, seq=1)
    assert (first["via"], first["why_full"]) == ("full", "no running artifact to patch")
    return r


def test_a_robot_on_a_delta_base_moves_only_the_delta(channel):
    r = on_v1(channel, 2)
    [ref] = channel.publisher.last_deltas
    index = channel.publisher.store.get_bytes(mf.delta_index_key(artifact_keys(2)[1]))
    got = runs(channel, r, 2, seq=2)
    assert (got["via"], got["why_full"]) == ("delta", "")
    assert got["moved"] == len(index) + ref.size < manifest(channel, 2).size
    assert min(got["transfer_s"], got["load_s"], got["health_s"]) >= 0


def test_a_tampered_delta_falls_back_to_the_whole_artifact(channel, caplog):
    r = on_v1(channel, 2)
    path = channel.tmp / "objects" / delta_key(2, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="vlac.edge.updater"):
        got = runs(channel, r, 2, seq=2)
    assert got["via"] == "full" and "does not match its signed index" in got["why_full"]
    assert got["moved"] > manifest(channel, 2).size  # the delta, then the artifact
    assert any("downloaded whole" in m and "corrupted or tampered" in m
               for m in caplog.messages)


def test_a_signed_delta_that_rebuilds_other_bytes_is_not_used(channel):
    """Even a delta the index vouches for only counts when its result has the manifest's
    sha256 (a publisher bug, or a key holder's mistake)."""
    r = on_v1(channel, 2)
    store, key = channel.publisher.store, channel.publisher.key
    v1 = store.get_bytes(artifact_keys(1)[0])
    wrong = bytearray(store.get_bytes(artifact_keys(2)[0]))
    wrong[-3] ^= 1  # the manifest's size, other bytes
    blob = delta.make(v1, bytes(wrong))
    store.put_bytes(delta_key(2, 1), blob)
    m = manifest(channel, 2)
    index = mf.DeltaIndex(format_version=mf.DELTA_INDEX_VERSION, version=2, sha256=m.sha256,
                          deltas=[mf.DeltaRef(base_version=1, base_sha256=delta.sha256(v1),
                                              key=delta_key(2, 1), size=len(blob),
                                              sha256=delta.sha256(blob))])
    store.put_bytes(mf.delta_index_key(artifact_keys(2)[1]), mf.sign_delta_index(index, key))
    got = runs(channel, r, 2, seq=2)
    assert got["via"] == "full" and "does not match the manifest's sha256" in got["why_full"]


def test_no_index_or_not_a_base_downloads_whole(channel):
    r = on_v1(channel)
    channel.publisher.cfg.delta_bases = 0  # a publisher without deltas (or one before them)
    channel.upload(2)
    got = runs(channel, r, 2, seq=2)
    assert got["via"] == "full" and "version 2 has no delta index" in got["why_full"]
    channel.publisher.cfg.delta_bases = 1
    channel.upload(3, 4)  # each from the newest before it: 4's only base is 3
    got = runs(channel, r, 4, seq=3)
    assert got["via"] == "full"
    assert "running version 2 is not a delta base of version 4 (bases: [3])" in got["why_full"]


def test_a_running_artifact_changed_on_disk_is_no_base(channel):
    r = on_v1(channel, 2)
    data = bytearray(r.running_path.read_bytes())
    data[-1] ^= 1
    r.running_path.write_bytes(bytes(data))
    got = runs(channel, r, 2, seq=2)
    assert got["via"] == "full" and "other bytes than the running artifact" in got["why_full"]


def test_a_forged_delta_index_is_ignored(channel):
    r = on_v1(channel, 2)
    m = manifest(channel, 2)
    forged = mf.DeltaIndex(format_version=mf.DELTA_INDEX_VERSION, version=2, sha256=m.sha256,
                           deltas=[])
    channel.publisher.store.put_bytes(mf.delta_index_key(artifact_keys(2)[1]),
                                      mf.sign_delta_index(forged, channel.evil_key))
    got = runs(channel, r, 2, seq=2)
    assert got["via"] == "full" and "delta index refused" in got["why_full"] and \
        "does not verify" in got["why_full"]


def test_bad_manifests_are_refused_as_before_with_a_delta_waiting(channel):
    r = on_v1(channel, 2)
    replace = msgspec.structs.replace
    genuine = mf.decode(channel.genuine(2, seq=2).manifest)
    bad = {"does not verify": mf.encode(mf.sign(genuine.manifest, channel.evil_key)),
           "unsigned": mf.encode(replace(genuine, signature=b"")),
           "manifest is for version 1": channel.genuine(1, seq=2).manifest}
    for seq, (why, data) in enumerate(bad.items(), start=2):
        channel.send(replace(channel.genuine(2, seq=seq), manifest=data))
        wait_for(lambda why=why: why in r.error, 10, f"{why!r} reported; error {r.error!r}")
        assert r.running_version == 1
    assert runs(channel, r, 2, seq=10)["via"] == "delta"  # the genuine one still applies


def test_a_restarted_publisher_makes_deltas_from_the_stores_copy(channel):
    """Its memory of uploaded artifacts is gone; the base comes from the store, checked
    against the fleet state's sha256."""
    from vlac.cloud.fleet.publisher import Publisher

    r = on_v1(channel)
    channel.publisher = Publisher(channel.publisher.cfg)
    channel.upload(2)
    assert [d.base_version for d in channel.publisher.last_deltas] == [1]
    assert runs(channel, r, 2, seq=2)["via"] == "delta"


def test_deltas_through_radosgw(tmp_path, s3_endpoint, monkeypatch):
    from vlac.shared.objstore import S3ObjectStore

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint["secret_key"])
    S3ObjectStore("fleet", endpoint_url=s3_endpoint["endpoint"], create_bucket=True)
    c = Channel(tmp_path, f"s3://fleet/deltas{time.time_ns()}?endpoint="
                          f"{s3_endpoint['endpoint']}")
    c.robots = []
    try:
        r = on_v1(c, 2)
        assert runs(c, r, 2, seq=2)["via"] == "delta"
        c.upload(3)
        c.publisher.store.delete(delta_key(3, 2))  # written, then lost: a missing delta
        got = runs(c, r, 3, seq=3)
        assert got["via"] == "full" and "unavailable" in got["why_full"]
    finally:
        for u in c.robots:
            u.stop()
            u.join(5)
        c.close()

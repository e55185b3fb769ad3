"""The weight updater against a hostile announcement channel: a hand-driven XPUB on loopback
(in place of the announcer, so a test decides exactly what arrives and when, and nothing is
re-sent behind its back) sends genuine announcements signed with the publisher's real key,
and junk; the robot's updater runs real ONNX Runtime sessions on the downloaded versions."""

import os
import threading
import time

import msgspec
import pytest
import zmq

from tests.helpers import tiny_policy_onnx, wait_for
from vlac.cloud.fleet.publisher import Publisher, PublisherConfig, artifact_keys, topic
from vlac.edge.runtime import OnnxPolicy
from vlac.edge.updater import UpdaterConfig, WeightUpdater
from vlac.shared import manifest as mf
from vlac.shared import wire

ROBOT = "robot-0"


class Channel:
    """The publisher's object store and signing key, and an XPUB socket the test drives."""

    def __init__(self, tmp, store_uri: str | None = None):
        self.tmp = tmp
        self.store_uri = store_uri or str(tmp / "objects")
        self.publisher = Publisher(PublisherConfig(
            fleet_dir=tmp / "fleet", object_store=self.store_uri,
            signing_key=tmp / "keys" / "publisher.ed25519", promote="none"))
        self.sock = zmq.Context.instance().socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:0")
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.evil_key = mf.load_private(mf.generate_keypair(tmp / "evil")[0])

    def upload(self, *versions: int) -> None:
        for v in versions:
            self.publisher.upload(tiny_policy_onnx(self.tmp / "art" / f"v{v}.onnx", v, seed=v),
                                  v)

    def genuine(self, version: int, seq: int, *, robot: str = ROBOT, downgrade: bool = False,
                key=None) -> wire.WeightAnnouncement:
        art_key, man_key = artifact_keys(version)
        a = mf.Assignment(robot_id=robot, version=version, seq=seq, manifest_key=man_key,
                          artifact_key=art_key, downgrade=downgrade, reason="production",
                          issued_at=time.time())
        payload, sig = mf.sign_assignment(a, key or self.publisher.key)
        return wire.WeightAnnouncement(robot_id=robot, version=version, seq=seq,
                                       assignment=payload, signature=sig,
                                       manifest=self.publisher.store.get_bytes(man_key))

    def junk(self, version: int, seq: int, seen: wire.WeightAnnouncement,
             ) -> list[wire.WeightAnnouncement]:
        """Everything an outsider can make that claims ``seq`` (the first one unsigned):
        signed with another key, a random signature, a genuine announcement it saw (``seen``)
        under a lying wrapper, another robot's genuine assignment in a wrapper addressed to
        this robot."""
        replace = msgspec.structs.replace
        return [replace(self.genuine(version, seq), signature=b""),
                self.genuine(version, seq, key=self.evil_key),
                replace(self.genuine(version, seq), signature=os.urandom(64)),
                replace(seen, seq=seq, version=version),
                replace(self.genuine(version, seq, robot="robot-1"), robot_id=ROBOT)]

    def send(self, *anns) -> None:
        for ann in anns:
            data = ann if isinstance(ann, bytes) else wire.encode(ann)
            self.sock.send_multipart([topic(ROBOT), data])

    def wait_subscribed(self, robot: str = ROBOT) -> None:
        want = b"\x01" + topic(robot)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.sock.poll(100) and self.sock.recv() == want:
                return
        raise AssertionError(f"{robot} never subscribed")

    def robot(self, load=None, running: int = -1) -> WeightUpdater:
        cfg = UpdaterConfig(publisher_address=self.address, object_store=self.store_uri,
                            publisher_key=self.tmp / "keys" / "publisher.ed25519.pub",
                            state_dir=self.tmp / "robots" / ROBOT, retry_s=0.2)
        u = WeightUpdater(cfg, ROBOT, load or (lambda p: OnnxPolicy(p)),
                          running_version=running, auto_swap=True)
        u.start()
        self.wait_subscribed()
        return u

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def channel(tmp_path):
    c = Channel(tmp_path)
    robots: list[WeightUpdater] = []
    c.robots = robots
    yield c
    for u in robots:
        u.stop()
        u.join(5)
    c.close()


def start(channel, **kw) -> WeightUpdater:
    u = channel.robot(**kw)
    channel.robots.append(u)
    return u


def test_junk_with_the_next_seq_does_not_block_the_genuine_assignment(channel):
    channel.upload(1, 2)
    r = start(channel)
    first = channel.genuine(1, seq=1)
    channel.send(first)
    wait_for(lambda: r.running_version == 1, 20, "version 1")
    junk = channel.junk(2, seq=2, seen=first)  # seqs are fleet-wide and consecutive
    channel.send(*junk, b"\x93not an announcement")
    wait_for(lambda: r.announcements_refused == len(junk) + 1, 10, "the junk refused")
    assert r.running_version == 1 and r.verifier.last_seq == 1
    assert "announcement refused" in r.error  # the note may say so...
    channel.send(channel.genuine(2, seq=2))  # ...but the genuine one with that seq applies
    wait_for(lambda: r.running_version == 2, 20, "version 2 despite the junk")
    assert r.applied == 2 and r.verifier.last_seq == 2 and r.error == ""
    assert (r.announcements_refused, r.announcements_replayed) == (len(junk) + 1, 0)


def test_junk_in_the_same_batch_never_hides_the_genuine_one(channel):
    """The updater is held inside its first update while junk with higher wrapper seqs and
    the genuine next assignment queue up on its socket; they are drained as one batch."""
    channel.upload(1, 2)
    inside, gate = threading.Event(), threading.Event()

    def gated(path):
        inside.set()
        gate.wait(20)
        return OnnxPolicy(path)

    r = start(channel, load=gated)
    observer = zmq.Context.instance().socket(zmq.SUB)  # sees what the robot's socket gets
    observer.setsockopt(zmq.LINGER, 0)
    observer.setsockopt(zmq.SUBSCRIBE, topic(ROBOT))
    observer.connect(channel.address)
    try:
        channel.wait_subscribed()
        first = channel.genuine(1, seq=1)
        channel.send(first)
        assert inside.wait(20), "the first update never started"
        genuine = channel.genuine(2, seq=2)
        batch = [*channel.junk(2, seq=5, seen=first), genuine,
                 *channel.junk(2, seq=9, seen=genuine)]  # junk's seqs are all higher
        channel.send(*batch)
        for _ in batch:
            assert observer.poll(10_000), "the batch never arrived"
            observer.recv_multipart()
        time.sleep(0.3)  # let the robot's socket receive it too (same sends, same host)
    finally:
        observer.close(0)
        gate.set()
    wait_for(lambda: r.running_version == 2, 20, "version 2 out of a batch full of junk")
    assert r.applied == 2 and r.verifier.last_seq == 2 and r.error == ""
    assert r.announcements_refused == len(batch) - 1 and r.announcements_replayed == 0


def test_replays_are_counted_and_refused_and_resends_are_quiet(channel):
    channel.upload(1, 2)
    r = start(channel)
    first = channel.genuine(1, seq=1)
    channel.send(first, first)
    wait_for(lambda: r.running_version == 1, 20, "version 1")
    second = channel.genuine(2, seq=3)
    channel.send(first, second)  # a re-send of the applied one, then the next
    wait_for(lambda: r.running_version == 2, 20, "version 2")
    channel.send(second, second, first, first)  # re-sends of seq 3 (normal), replays of 1
    wait_for(lambda: r.announcements_replayed == 2, 10, "the replays counted")
    assert r.running_version == 2 and r.applied == 2 and r.verifier.last_seq == 3
    assert r.announcements_refused == 0 and r.error == ""
    # The same version, genuinely signed as a rollback with a new seq, applies.
    channel.send(channel.genuine(1, seq=4, downgrade=True))
    wait_for(lambda: r.running_version == 1, 20, "the signed rollback")
    assert (r.announcements_refused, r.announcements_replayed) == (0, 2)


def test_a_transient_failure_is_retried_through_junk(channel):
    """Junk arriving while a genuine download waits to be retried neither cancels the retry
    nor hides its error."""
    channel.upload(1)
    art = channel.tmp / "objects" / artifact_keys(1)[0]
    away = art.with_suffix(".away")
    art.rename(away)  # the object store lost it for a while
    r = start(channel)
    first = channel.genuine(1, seq=1)
    channel.send(first)
    wait_for(lambda: "download failed" in r.error, 10, "the failed download reported")
    junk = channel.junk(1, seq=2, seen=first)
    channel.send(*junk)
    wait_for(lambda: r.announcements_refused == len(junk), 10, "the junk refused")
    assert "download failed" in r.error and r.running_version == -1
    away.rename(art)  # back: the retry (nothing is re-sent here) applies it
    wait_for(lambda: r.running_version == 1, 20, "version 1 after the retry")
    assert r.error == "" and r.announcements_replayed == 0

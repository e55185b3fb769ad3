"""Weight publishing and the fleet: signed versions, a live announcer (real XPUB/SUB sockets on
loopback), robots' updaters with real ONNX Runtime sessions, fleet decisions, and faults."""

import contextlib
import shutil
import socket
import threading
import time

import onnx
import pytest

from tests.helpers import tiny_policy_onnx, wait_for
from vlac.cloud.fleet.publisher import Announcer, Publisher, PublisherConfig, artifact_keys
from vlac.cloud.fleet.state import FleetState, in_fraction, open_fleet_state
from vlac.edge.runtime import OnnxPolicy
from vlac.edge.updater import UpdaterConfig, WeightUpdater
from vlac.shared import manifest as mf
from vlac.shared import wire


# ------------------------------------------------------------------ fleet state rules
def test_fraction_canary_is_stable_and_about_the_right_size(tmp_path):
    robots = [f"robot-{i}" for i in range(400)]
    chosen = [r for r in robots if in_fraction(r, 0.25)]
    assert 60 < len(chosen) < 140
    assert chosen == [r for r in robots if in_fraction(r, 0.25)]


OLD_ROBOTS_TABLE = """CREATE TABLE robots (robot_id TEXT PRIMARY KEY, first_seen REAL,
  last_seen REAL, running_version INTEGER DEFAULT -1, update_error TEXT DEFAULT '',
  spool_depth INTEGER DEFAULT 0)"""
"""The robots table as fleet.db had it before announcement counts existed."""

RED = "\x1b[1;31m"


def status_text(fleet_dir, width: int = 250) -> tuple[list[dict], str]:
    """`vlac fleet status` rows and what it prints on a colour terminal."""
    import io

    from rich.console import Console

    from vlac.infra.fleet_cli import FleetConfig, status_main

    out = io.StringIO()
    rows = status_main(FleetConfig(fleet_dir=fleet_dir),
                       console=Console(file=out, width=width, force_terminal=True,
                                       color_system="standard"))
    return rows, out.getvalue()


def status_line(text: str, robot: str) -> str:
    return next(line for line in text.splitlines() if robot in line)


def test_announcement_counts_are_stored_and_an_old_fleet_db_gains_them(tmp_path):
    import sqlite3

    db = tmp_path / "fleet" / "fleet.db"
    db.parent.mkdir()
    old = sqlite3.connect(db)  # a fleet.db written by the version before the counts
    old.execute(OLD_ROBOTS_TABLE)
    old.execute("INSERT INTO robots VALUES('robot-old', 1.0, 2.0, 3, '', 0)")
    old.commit()
    old.close()
    fleet = FleetState(db)
    [row] = fleet.robots()
    assert (row["robot_id"], row["running_version"]) == ("robot-old", 3)
    assert (row["announcements_refused"], row["announcements_replayed"]) == (0, 0)
    fleet.robot_seen("robot-old", 3, "", 0, announcements_refused=7, announcements_replayed=2)
    fleet.robot_seen("robot-new", 1, announcements_refused=0, announcements_replayed=0)
    fleet.robot_seen("robot-new")  # a subscription (no counts) leaves them as they are
    fleet.close()
    again = FleetState(db)  # opening a migrated file again changes nothing
    counts = {r["robot_id"]: (r["announcements_refused"], r["announcements_replayed"])
              for r in again.robots()}
    assert counts == {"robot-new": (0, 0), "robot-old": (7, 2)}
    again.close()
    with contextlib.closing(sqlite3.connect(db)) as raw:
        cols = [c[1] for c in raw.execute("PRAGMA table_info(robots)")]
    assert cols.count("announcements_refused") == 1 == cols.count("announcements_replayed")
    rows, text = status_text(db.parent)
    assert [(r["robot_id"], r["announcements_refused"], r["announcements_replayed"])
            for r in rows] == [("robot-new", 0, 0), ("robot-old", 7, 2)]
    assert "announcements" in text and "refused/replayed" in text
    assert "some robots refused" in text
    assert "0/0" in status_line(text, "robot-new")
    assert RED not in status_line(text, "robot-new")  # clean robots are not highlighted
    assert f"{RED}7" in status_line(text, "robot-old")
    assert f"{RED}2" in status_line(text, "robot-old")


def test_heartbeats_carry_announcement_counts_to_fleet_status(tmp_path, keyring):
    """Sender -> real ingest (recording heartbeats in the fleet state) -> `vlac fleet
    status`."""
    from tests.helpers import ThreadIngest, ingest_config, sender_config
    from vlac.edge.transport.sender import Sender

    counts = {"robot-1": (0, 0), "robot-2": (4, 1)}
    icfg = ingest_config(keyring, tmp_path / "store")
    icfg.fleet_dir = tmp_path / "fleet"
    with ThreadIngest(icfg) as ingest:
        senders = []
        for robot in counts:
            cfg = sender_config(keyring, robot, ingest.address, tmp_path / robot,
                                heartbeat_s=0.1)
            senders.append(Sender(cfg, cfg.make_spool(), wire.DEFAULT_SPEC,
                                  announcements=lambda robot=robot: counts[robot]).start())
        fleet = FleetState(icfg.fleet_dir / "fleet.db")
        try:
            def seen():
                return {r["robot_id"]: (r["announcements_refused"],
                                        r["announcements_replayed"]) for r in fleet.robots()}

            wait_for(lambda: seen() == counts, 10, f"counts {counts} in the fleet state")
            counts["robot-1"] = (2, 0)  # the updater refused junk meanwhile
            wait_for(lambda: seen() == counts, 10, f"counts {counts} in the fleet state")
        finally:
            fleet.close()
            for s in senders:
                s.stop()
    rows, text = status_text(icfg.fleet_dir)
    assert {r["robot_id"]: (r["announcements_refused"], r["announcements_replayed"])
            for r in rows} == counts
    assert f"{RED}2\x1b[0m/0 " in status_line(text, "robot-1")  # only the nonzero one red
    assert f"{RED}4\x1b[0m/{RED}1\x1b[0m " in status_line(text, "robot-2")


# ------------------------------------------------------------------ live fleet
class Fleet:
    """An announcer thread plus updater-only robots, all on loopback."""

    def __init__(self, tmp, store_uri: str | None = None, resend_s: float = 0.5,
                 fleet_url: str = ""):
        self.tmp = tmp
        self.cfg = PublisherConfig(fleet_dir=tmp / "fleet", fleet_url=fleet_url,
                                   object_store=store_uri or
                                   str(tmp / "objects"),
                                   signing_key=tmp / "keys" / "publisher.ed25519",
                                   bind="tcp://127.0.0.1:0", resend_s=resend_s, poll_s=0.05)
        self.publisher = Publisher(self.cfg)
        self.robots: dict[str, WeightUpdater] = {}
        self.start_announcer()

    def start_announcer(self, bind: str | None = None):
        if bind:
            self.cfg.bind = bind
        self.announcer = Announcer(self.cfg, open_fleet_state(self.cfg.fleet_dir,
                                                              self.cfg.fleet_url))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.announcer.run, args=(self.stop,),
                                       daemon=True)
        self.thread.start()

    def stop_announcer(self):
        self.stop.set()
        self.thread.join(5)
        self.announcer.close()

    def publish(self, version: int, **kw):
        art = tiny_policy_onnx(self.tmp / "art" / f"v{version}.onnx", version, seed=version,
                               **kw)
        return self.publisher.upload(art, version)

    def robot(self, name: str, running: int = -1) -> WeightUpdater:
        cfg = UpdaterConfig(publisher_address=self.announcer.address,
                            object_store=self.cfg.object_store,
                            publisher_key=self.tmp / "keys" / "publisher.ed25519.pub",
                            state_dir=self.tmp / "robots" / name, retry_s=0.2)
        u = WeightUpdater(cfg, name, lambda p: OnnxPolicy(p), running_version=running,
                          auto_swap=True)
        u.start()
        self.robots[name] = u
        return u

    def wait_versions(self, want: dict[str, int], timeout: float = 20.0):
        wait_for(lambda: all(self.robots[r].running_version == v for r, v in want.items()),
                 timeout, f"robots at {want}; now "
                 f"{ {r: u.running_version for r, u in self.robots.items()} }")

    def close(self):
        for u in self.robots.values():
            u.stop()
            u.join(5)
        self.stop_announcer()


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet(request, tmp_path):
    """A live fleet on its state in fleet.db, or in a real PostgreSQL (--fleet-url)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    f = Fleet(tmp_path, fleet_url=url)
    yield f
    f.close()


def test_versions_reach_robots_rollback_pins_and_canary(fleet):
    robots = [fleet.robot(f"robot-{i}") for i in range(3)]
    fleet.publish(1)
    fleet.wait_versions({"robot-0": 1, "robot-1": 1, "robot-2": 1})
    fleet.publish(2)
    fleet.wait_versions({"robot-0": 2, "robot-1": 2, "robot-2": 2})
    fleet.publisher.fleet.rollback()  # signed downgrade, applied everywhere
    fleet.wait_versions({"robot-0": 1, "robot-1": 1, "robot-2": 1})
    fleet.publisher.fleet.pin(2, robot="robot-2")
    fleet.wait_versions({"robot-2": 2})
    fleet.publisher.cfg.promote = "none"
    fleet.publish(3)
    fleet.publisher.fleet.set_group("canary", ["robot-0"])
    fleet.publisher.fleet.start_canary(3, group="canary")
    fleet.wait_versions({"robot-0": 3})
    time.sleep(1.0)  # several re-sends later, nobody else moved
    assert [r.running_version for r in robots] == [3, 1, 2]
    fleet.publisher.fleet.promote(3)
    fleet.wait_versions({"robot-0": 3, "robot-1": 3})
    assert robots[2].running_version == 2  # the pin holds over a promotion
    assert all(r.error == "" for r in robots)
    # Re-sends, rollbacks and pins are all genuine and in order: nothing refused or replayed.
    assert [(r.announcements_refused, r.announcements_replayed) for r in robots] == [(0, 0)] * 3
    assert fleet.announcer.fleet.assignments()["robot-2"]["reason"] == "pin"


def test_replays_and_forgeries_are_refused(fleet, tmp_path):
    r = fleet.robot("robot-0")
    fleet.publish(1)
    fleet.wait_versions({"robot-0": 1})
    old = fleet.announcer.fleet.last_assignment("robot-0")[2]
    fleet.publish(2)
    fleet.wait_versions({"robot-0": 2})
    # A replay of the older signed announcement is refused (stale sequence).
    ann = wire.decode(old)
    r.consider(ann)
    assert r.running_version == 2 and r.error == ""
    assert (r.announcements_refused, r.announcements_replayed) == (0, 1)
    # An announcement signed with another key is refused and reported.
    priv, _ = mf.generate_keypair(tmp_path / "evil")
    a = mf.Assignment(robot_id="robot-0", version=1, seq=10**6, manifest_key=artifact_keys(1)[1],
                      artifact_key=artifact_keys(1)[0],
                      downgrade=True, reason="evil", issued_at=0.0)
    payload, sig = mf.sign_assignment(a, mf.load_private(priv))
    r.consider(wire.WeightAnnouncement(robot_id="robot-0", version=1, seq=10**6,
                                       assignment=payload, signature=sig,
                                       manifest=ann.manifest))
    assert r.running_version == 2 and "does not verify" in r.error
    assert (r.announcements_refused, r.announcements_replayed) == (1, 1)
    assert r.verifier.last_seq < 10**6  # nothing unverified moved the replay protection
    # An old version without the downgrade flag is refused even when properly signed.
    a = mf.Assignment(robot_id="robot-0", version=1, seq=10**6 + 1, manifest_key="x",
                      artifact_key="y", downgrade=False, reason="old", issued_at=0.0)
    payload, sig = mf.sign_assignment(a, fleet.announcer.key)
    r.consider(wire.WeightAnnouncement(robot_id="robot-0", version=1, seq=10**6 + 1,
                                       assignment=payload, signature=sig,
                                       manifest=ann.manifest))
    assert r.running_version == 2 and "older than the running" in r.error
    assert (r.announcements_refused, r.announcements_replayed) == (1, 1)  # signed: not junk


def test_corrupted_truncated_and_unhealthy_versions_keep_the_last_good(fleet):
    r = fleet.robot("robot-0")
    fleet.publish(1)
    fleet.wait_versions({"robot-0": 1})
    store = fleet.publisher.store

    def spoil_deltas(version):  # the robot tries its delta first: tampered, so it downloads
        for key in store.list(f"weights/v{version:06d}/"):
            if "/delta-from-" in key:
                store.put_bytes(key, b"tampered")

    # Corrupted artifact in the store: hash mismatch after a fresh download.
    fleet.publisher.cfg.promote = "none"
    fleet.publish(2)
    spoil_deltas(2)
    art = fleet.tmp / "objects" / artifact_keys(2)[0]
    data = bytearray(art.read_bytes())
    data[-5] ^= 0xFF
    art.write_bytes(bytes(data))
    fleet.publisher.fleet.promote(2)
    wait_for(lambda: "sha256 does not match" in r.error, 10, "corruption reported")
    assert r.running_version == 1
    # Truncated artifact.
    fleet.publish(3)
    spoil_deltas(3)
    art = fleet.tmp / "objects" / artifact_keys(3)[0]
    art.write_bytes(art.read_bytes()[:100])
    fleet.publisher.fleet.promote(3)
    wait_for(lambda: "truncated" in r.error, 10, "truncation reported")
    # A version whose outputs are NaN fails its health check.
    fleet.publish(4, nan=True)
    fleet.publisher.fleet.promote(4)
    wait_for(lambda: "health check failed" in r.error, 10, "health check failure reported")
    assert r.running_version == 1 and r.applied == 1
    # A good version after all that still applies.
    fleet.publish(5)
    fleet.publisher.fleet.promote(5)
    fleet.wait_versions({"robot-0": 5})
    assert r.error == "" and store.exists(artifact_keys(5)[0])


def test_publisher_and_robot_restarts(fleet):
    r = fleet.robot("robot-0")
    fleet.publish(1)
    fleet.wait_versions({"robot-0": 1})
    address = fleet.announcer.address
    fleet.stop_announcer()
    fleet.publisher.cfg.promote = "none"
    fleet.publish(2)  # published while the announcer is down
    fleet.publisher.fleet.promote(2)
    time.sleep(0.5)
    assert r.running_version == 1
    fleet.start_announcer(bind=address)  # same address; sequence numbers continue
    fleet.wait_versions({"robot-0": 2})
    seq = r.verifier.last_seq
    # The robot restarts: its last-known-good and replay protection come back from disk.
    r.stop()
    r.join(5)
    again = fleet.robot("robot-0")
    assert again.running_version == 2 and again.verifier.last_seq == seq
    assert again.restore().version == 2
    time.sleep(1.0)  # re-sends of seq `seq` are recognised as already applied
    assert again.applied == 0 and again.error == ""
    assert (again.announcements_refused, again.announcements_replayed) == (0, 0)  # normal


class CuttingProxy:
    """A TCP proxy to the S3 endpoint that can cut every transfer after ``cut_after`` bytes
    from the server (S3 going away mid-download), or pass everything through."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.cut_after: int | None = None
        self.cuts = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, src, dst, from_server: bool):
        sent = 0
        try:
            while data := src.recv(65536):
                if from_server and self.cut_after is not None and \
                        sent + len(data) > self.cut_after:
                    dst.sendall(data[: max(0, self.cut_after - sent)])
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):  # shutdown (not just close) wakes the other pipe's recv
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


def test_s3_down_mid_download_is_retried_until_it_applies(tmp_path, s3_endpoint, monkeypatch):
    from urllib.parse import urlparse

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_endpoint["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_endpoint["secret_key"])
    proxy = CuttingProxy(urlparse(s3_endpoint["endpoint"]).port)
    from vlac.shared.objstore import S3ObjectStore

    S3ObjectStore("fleet", endpoint_url=s3_endpoint["endpoint"], create_bucket=True)
    f = Fleet(tmp_path, store_uri=f"s3://fleet/t{time.time_ns()}?endpoint="
              f"{s3_endpoint['endpoint']}")
    try:
        robot_cfg_store = f.cfg.object_store.replace(
            s3_endpoint["endpoint"], f"http://127.0.0.1:{proxy.port}")
        f.cfg.object_store, publish_store = robot_cfg_store, f.cfg.object_store
        r = f.robot("robot-0")  # downloads through the proxy
        f.cfg.object_store = publish_store
        proxy.cut_after = 600  # every response is cut mid-body
        f.publish(1)
        wait_for(lambda: "download failed" in r.error, 60, "the failed download reported")
        assert r.running_version == -1 and proxy.cuts > 0
        proxy.cut_after = None  # S3 is back
        f.wait_versions({"robot-0": 1}, timeout=60)
        assert r.error == ""
    finally:
        f.close()  # stops the updaters before their folders go (they write state into them)
    shutil.rmtree(tmp_path / "robots", ignore_errors=True)


def test_a_streaming_robot_swaps_versions_between_episodes_and_reports_them(tmp_path,
                                                                            keyring):
    """`vlac edge run` with the updater: Meta-World robot, real ingest (recording heartbeats
    in the fleet state), live announcer; `vlac fleet status` sees the running version."""
    from tests.helpers import ThreadIngest, ingest_config, sender_config
    from vlac.edge.process import EdgeAgentConfig
    from vlac.edge.process import main as edge_run
    from vlac.edge.robots.metaworld import MetaWorldRobotConfig
    from vlac.infra.fleet_cli import FleetConfig, status_main, versions_main
    from vlac.shared import tasks

    shape = (128, 128, 3)
    sentences = tuple(tasks.instructions("reach-v3"))
    f = Fleet(tmp_path)
    try:
        v0 = tiny_policy_onnx(tmp_path / "v0.onnx", 0, image_shape=shape, sentences=sentences)
        f.publish(1, image_shape=shape, sentences=sentences)
        icfg = ingest_config(keyring, tmp_path / "store")
        icfg.fleet_dir = f.cfg.fleet_dir
        with ThreadIngest(icfg) as ingest:
            cfg = EdgeAgentConfig(
                sender=sender_config(keyring, "robot-1", ingest.address, tmp_path / "spool"),
                robot=MetaWorldRobotConfig(task="reach-v3", seed=1, max_steps=30),
                updater=UpdaterConfig(publisher_address=f.announcer.address,
                                      object_store=f.cfg.object_store,
                                      publisher_key=tmp_path / "keys" / "publisher.ed25519.pub",
                                      state_dir=tmp_path / "robot-1-weights"),
                policy="onnx", policy_path=v0, episodes=6, step_hz=40, chunk_steps=8,
                quiet=True)
            summary = edge_run(cfg)
            assert summary["drained"] and summary["versions"][0] == 0
            assert summary["versions"][-1] == 1 and summary["policy_version"] == 1
            eps = ingest.store.list_episodes()
            stored = sorted(int(ingest.store.load_episode("robot-1", e["episode_id"])
                                .steps.policy_version[0]) for e in eps)
            assert stored == sorted(summary["versions"])  # one version per episode
        rows = status_main(FleetConfig(fleet_dir=f.cfg.fleet_dir, store_root=tmp_path / "store"))
        robot = next(r for r in rows if r["robot_id"] == "robot-1")
        assert robot["running_version"] == 1 and robot["target"] == 1
        assert robot["update_error"] == "" and robot["recent_success"] is not None
        assert (robot["announcements_refused"], robot["announcements_replayed"]) == (0, 0)
        assert [v["role"] for v in versions_main(FleetConfig(fleet_dir=f.cfg.fleet_dir))] == \
            ["production"]
    finally:
        f.close()


def test_the_learner_publishes_versions_that_a_robot_verifies_and_runs(tmp_path):
    """learner -> export -> INT8 QDQ -> signed upload -> announcement -> robot's updater."""
    from tests.cloud.test_learner import config, tiny_actor, write_episode
    from vlac.cloud.learner.process import main as learner_main
    from vlac.cloud.store.episodes import EpisodeStore

    tiny_actor(tmp_path / "init.pt")
    store = EpisodeStore(tmp_path / "store", fsync=False)
    for i in range(2):
        write_episode(store, "robot-0", f"ep-{i}", 10, success=i == 0, seed=i)
    write_episode(store, "operator", "demo-0", 8, success=True, source="demo", seed=9)
    f = Fleet(tmp_path)
    try:
        robot = f.robot("robot-0")
        cfg = config(tmp_path, rewards={"mode": "sparse"},
                     publish={"enabled": True, "tasks": ["button-v3"], "publisher": f.cfg})
        result = learner_main(cfg)
        assert result["version"] == 1
        assert [v["version"] for v in f.publisher.fleet.versions()] == [0, 1]
        f.wait_versions({"robot-0": 1}, timeout=30)
        policy = OnnxPolicy(robot.running_path)
        assert policy.version == 1 and policy.meta["observation"]["image_shape"] == [32, 32, 3]
        nodes = onnx.load(str(robot.running_path)).graph.node
        assert "QuantizeLinear" in {n.op_type for n in nodes}
    finally:
        f.close()

"""Publishing weights to the fleet: export -> INT8 -> signed upload, then announcements.

Two halves, both holding the publisher's ed25519 key:

- ``Publisher.upload(artifact, version)`` (through ``vlac.cloud.actor.export.ActorPublisher``
  from the learner every N updates, or ``vlac publisher publish`` for an artifact exported by
  hand; the export itself, which needs torch, stays in the actor package): the actor in ONNX,
  quantized to INT8 QDQ (calibrated on demonstration frames; ``precision: fp32`` skips
  this and ships the exact fp32 graph, ``actor_fp32.onnx``), uploads the artifact and its
  signed manifest to the object store under ``weights/vNNNNNN/``, records the version in the
  fleet state and, by default, promotes it (``promote: production | canary | none``).
  Before the manifest it writes **deltas** (``vlac.shared.delta``) from up to
  ``delta_bases`` earlier versions (production and canary first: where robots are, then the
  newest) and a signed delta index beside the manifest (``vlac.shared.manifest``), so that a
  robot on one of those versions moves only what changed; a delta above ``delta_max_ratio``
  of the artifact (a retrain that changed most weights) is not written. Base bytes come from
  the versions this publisher uploaded (kept in memory) or from the store, checked against
  the fleet state's sha256. A delta is an optimisation: one that cannot be made is logged and
  its robots download the whole artifact, never a reason not to publish.
- ``Announcer`` (``vlac publisher serve``): a ZeroMQ XPUB socket. Each robot subscribes to
  its own topic (``robot_id + "\\0"``); XPUB hands us every subscription, including the one a
  robot makes again on reconnect, and we answer with that robot's current signed assignment
  (so a robot asks for the latest version just by connecting). The fleet state's revision
  counter is polled; any change (new version, promote, rollback, canary, pin) issues a new
  assignment, with a new sequence number, to every robot whose target changed. Every
  ``resend_s`` the current assignments are sent again (PUB drops messages to peers that are
  not connected yet); robots ignore a sequence they already applied.

The announcement channel is not encrypted: what it carries is signed, and the weights come
from the object store. Restarting the announcer loses nothing: sequence numbers and the last
announcement per robot live in the fleet state.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import zmq

from vlac.cloud.fleet.state import (
    URL_HELP,
    FleetState,
    FleetStateUnavailable,
    check_fleet_url,
    open_fleet_state,
)
from vlac.shared import delta, wire
from vlac.shared import manifest as mf
from vlac.shared.config import check, describe, opt
from vlac.shared.objstore import ObjectStoreError, open_store
from vlac.shared.signals import on_stop_signals

log = logging.getLogger(__name__)


def topic(robot_id: str) -> bytes:
    return robot_id.encode() + b"\0"


def artifact_keys(version: int, precision: str = "int8") -> tuple[str, str]:
    base = f"weights/v{version:06d}"
    return f"{base}/actor_{precision}.onnx", f"{base}/manifest.msgpack"


def delta_key(version: int, base: int) -> str:
    return f"weights/v{version:06d}/delta-from-v{base:06d}.bin"


@dataclass
class PublisherConfig:
    fleet_dir: Path = opt(Path(".cache/fleet"), "Fleet state (fleet.db) lives here.")
    fleet_url: str = opt("", URL_HELP)
    object_store: str = opt(".cache/objects", "Where weights go: a folder or "
                            "s3://bucket/prefix?endpoint=URL.")
    signing_key: Path = opt(Path(".cache/keys/publisher/publisher.ed25519"),
                            "The publisher's ed25519 private key (robots hold its .pub).")
    bind: str = opt("tcp://127.0.0.1:5570", "Announcement socket (XPUB) address.")
    resend_s: float = opt(5.0, "Re-send current assignments this often.")
    poll_s: float = opt(0.1, "How often the fleet state is checked for changes.")
    promote: Literal["production", "canary", "none"] = opt(
        "production", "What a newly published version becomes.")
    canary_fraction: float = opt(0.25, "Fraction of robots for promote=canary.")
    delta_bases: int = opt(2, "Deltas per new version: from this many earlier versions "
                           "(production and canary first, then the newest; 0: none). Robots "
                           "on other versions download the whole artifact.")
    delta_max_ratio: float = opt(0.8, "A delta larger than this fraction of its artifact is "
                                 "not written (robots download the artifact whole).")
    precision: Literal["int8", "fp32"] = opt(
        "int8", "What the learner's versions go out as: int8 (static QDQ, the edge default: "
        "about a third of the size and faster) or fp32 (the learner's exact weights: for "
        "simulated robots, or while INT8 token agreement is short: docs/training.md).")
    # for `vlac publisher publish`
    artifact: Path | None = opt(None, "An exported .onnx (INT8 or fp32) to publish "
                                "(`vlac publisher publish`).")
    version: int | None = opt(None, "Version to publish it as (default: its metadata's).")

    def __post_init__(self) -> None:
        self.fleet_dir, self.signing_key = Path(self.fleet_dir), Path(self.signing_key)
        check_fleet_url(self.fleet_url)
        check(self.resend_s > 0, "resend_s", "must be > 0")
        check(self.poll_s > 0, "poll_s", "must be > 0")
        check(0 < self.canary_fraction <= 1, "canary_fraction", "must be in (0, 1]")
        check(self.delta_bases >= 0, "delta_bases", "must be >= 0 (0: no deltas)")
        check(0 < self.delta_max_ratio <= 1, "delta_max_ratio", "must be in (0, 1]")
        check(self.precision in ("int8", "fp32"), "precision", "use int8 or fp32")


def ensure_signing_key(path: Path) -> None:
    """Create the publisher key pair on first use (robots are enrolled with the .pub)."""
    if not path.exists():
        mf.generate_keypair(path.parent, path.name.removesuffix(".ed25519"))
        log.info("created publisher signing key %s", path)


def read_meta(onnx_path: Path) -> dict:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == "vlac":
            return json.loads(p.value)
    raise ValueError(f"{onnx_path} has no vlac metadata; export it with `vlac actor export`")


class _PublisherSide:
    """What both halves hold: the config, the signing key, the object store, the fleet state."""

    def __init__(self, cfg: PublisherConfig, fleet: FleetState | None = None) -> None:
        self.cfg = cfg
        ensure_signing_key(cfg.signing_key)
        self.key = mf.load_private(cfg.signing_key)
        self.store = open_store(cfg.object_store)
        self.fleet = fleet or open_fleet_state(cfg.fleet_dir, cfg.fleet_url)


class Publisher(_PublisherSide):
    """Uploads signed versions, with deltas from earlier ones, and records them in the fleet
    state."""

    def __init__(self, cfg: PublisherConfig, fleet: FleetState | None = None) -> None:
        super().__init__(cfg, fleet)
        self._recent: dict[int, bytes] = {}
        """Artifacts this publisher uploaded, by version: delta bases without a download."""
        self.last_deltas: list[mf.DeltaRef] = []
        """The deltas the last ``upload`` wrote."""

    def upload(self, artifact: Path, version: int, parent: int | None = None,
               meta: dict | None = None) -> mf.Manifest:
        meta = meta or read_meta(artifact)
        if int(meta.get("policy_version", version)) != version:
            raise ValueError(f"{artifact} says policy_version {meta['policy_version']}, "
                             f"not {version}; export it with --version {version}")
        if parent is None:
            parent = self.fleet.latest_version()
            parent = -1 if parent is None else parent
        art_key, man_key = artifact_keys(version, meta.get("precision", "int8"))
        m = mf.make_manifest(artifact, version, parent, meta["action_tokenizer"],
                             meta["observation"])
        m = msgspec.structs.replace(m, artifact=art_key)
        data = Path(artifact).read_bytes()
        self.store.put_file(art_key, artifact)
        # deltas before the manifest: a robot that can see the version finds its deltas
        self.last_deltas = self._write_deltas(m, data, man_key)
        self.store.put_bytes(man_key, mf.encode(mf.sign(m, self.key)))
        self.fleet.add_version(version, parent, man_key, art_key, m.size, m.sha256)
        self._remember(version, data)
        if self.cfg.promote == "production":
            self.fleet.promote(version)
        elif self.cfg.promote == "canary":
            self.fleet.start_canary(version, fraction=self.cfg.canary_fraction)
        log.info("published version %d (%d bytes) as %s, deltas from %s", version, m.size,
                 art_key, [d.base_version for d in self.last_deltas] or "none")
        return m

    def delta_bases(self, version: int) -> list[int]:
        """The versions ``version`` gets deltas from: production and canary (where most
        robots are), then the newest others; at most ``delta_bases``."""
        canary = self.fleet.canary or {}
        published = [v["version"] for v in self.fleet.versions()]
        first = [v for v in (self.fleet.production, canary.get("version")) if v is not None]
        bases: list[int] = []
        for v in [*first, *sorted(published, reverse=True)]:
            if v != version and v in published and v not in bases:
                bases.append(v)
        return bases[:self.cfg.delta_bases]

    def _base_bytes(self, version: int) -> bytes:
        if version in self._recent:
            return self._recent[version]
        v = self.fleet.version(version)
        data = self.store.get_bytes(v["artifact_key"])
        if delta.sha256(data) != v["sha256"]:
            raise ValueError(f"the stored artifact of version {version} does not match the "
                             "sha256 the fleet state recorded for it")
        return data

    def _remember(self, version: int, data: bytes) -> None:
        self._recent[version] = data
        for v in sorted(self._recent)[:-max(1, self.cfg.delta_bases + 1)]:
            del self._recent[v]  # enough to be the next versions' bases

    def _write_deltas(self, m: mf.Manifest, data: bytes, man_key: str) -> list[mf.DeltaRef]:
        """Deltas from each base to ``data`` and their signed index; the ones written."""
        refs = []
        for b in self.delta_bases(m.version):
            try:
                base = self._base_bytes(b)
                blob = delta.make(base, data)
                if len(blob) > self.cfg.delta_max_ratio * len(data):
                    log.info("no delta from version %d to %d: it would be %.0f%% of the "
                             "artifact (most bytes changed)", b, m.version,
                             100 * len(blob) / len(data))
                    continue
                key = delta_key(m.version, b)
                self.store.put_bytes(key, blob)
            except (ObjectStoreError, ValueError) as e:
                log.warning("no delta from version %d to %d (robots on %d download it whole): "
                            "%s", b, m.version, b, e)
                continue
            refs.append(mf.DeltaRef(base_version=b, base_sha256=delta.sha256(base), key=key,
                                    size=len(blob), sha256=delta.sha256(blob)))
        if refs:
            index = mf.DeltaIndex(format_version=mf.DELTA_INDEX_VERSION, version=m.version,
                                  sha256=m.sha256, deltas=refs)
            self.store.put_bytes(mf.delta_index_key(man_key), mf.sign_delta_index(index,
                                                                                  self.key))
        return refs


class Announcer(_PublisherSide):
    """Sends each robot its signed assignment; see the module docstring."""

    def __init__(self, cfg: PublisherConfig, fleet: FleetState | None = None) -> None:
        super().__init__(cfg, fleet)
        self._manifests: dict[int, bytes] = {}
        self.robots: set[str] = {r["robot_id"] for r in self.fleet.robots()}
        self.sent = 0
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 10000)
        self.sock.bind(cfg.bind)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def close(self) -> None:
        self.sock.close(0)
        self.fleet.close()

    def _manifest(self, version: int, key: str) -> bytes:
        if version not in self._manifests:
            self._manifests[version] = self.store.get_bytes(key)
        return self._manifests[version]

    def assignment_for(self, robot_id: str, force: bool) -> bytes | None:
        """The announcement to send ``robot_id`` now: a new one when its target changed, the
        last one again when ``force``, else None."""
        target = self.fleet.target(robot_id)
        if target is None:
            return None
        last = self.fleet.last_assignment(robot_id)
        if last is not None and last[1] == target.version:
            return last[2] if force else None
        v = self.fleet.version(target.version)
        a = mf.Assignment(robot_id=robot_id, version=target.version, seq=self.fleet.next_seq(),
                          manifest_key=v["manifest_key"], artifact_key=v["artifact_key"],
                          downgrade=target.downgrade, reason=target.reason,
                          issued_at=time.time())
        payload, sig = mf.sign_assignment(a, self.key)
        blob = wire.encode(wire.WeightAnnouncement(
            robot_id=robot_id, version=a.version, seq=a.seq, assignment=payload,
            signature=sig, manifest=self._manifest(a.version, v["manifest_key"])))
        self.fleet.record_assignment(robot_id, a.seq, a.version, a.reason, blob)
        log.info("robot %s -> version %d (%s, seq %d%s)", robot_id, a.version, a.reason, a.seq,
                 ", downgrade" if a.downgrade else "")
        return blob

    def _send(self, robot_id: str, force: bool) -> None:
        try:
            blob = self.assignment_for(robot_id, force)
        except FleetStateUnavailable:
            raise
        except Exception as e:  # one bad version must not stop announcements to the rest
            log.error("cannot announce to %s: %s", robot_id, e)
            return
        if blob is not None:
            self.sock.send_multipart([topic(robot_id), blob])
            self.sent += 1

    def _subscriptions(self) -> None:
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not msg or msg[0] != 1:
                continue  # unsubscribe
            robot_id = msg[1:].rstrip(b"\0").decode("utf-8", "replace")
            try:
                wire.check_id(robot_id, "robot id")
            except wire.WireError:
                log.warning("ignoring a subscription to %r: not a robot id", msg[1:80])
                continue
            if robot_id not in self.robots:
                log.info("robot %s subscribed", robot_id)
                self.robots.add(robot_id)
            self.fleet.robot_seen(robot_id)
            self._send(robot_id, force=True)

    def run(self, stop: threading.Event) -> None:
        revision, next_resend = -1, time.monotonic() + self.cfg.resend_s
        while not stop.is_set():
            try:
                revision, next_resend = self._turn(revision, next_resend)
            except FleetStateUnavailable as e:  # the database is down: wait, then go on
                log.warning("announcements paused: %s", e)
                stop.wait(1.0)

    def _turn(self, revision: int, next_resend: float) -> tuple[int, float]:
        """Answer new subscriptions; announce on a fleet change, re-send all when due."""
        if self.sock.poll(int(self.cfg.poll_s * 1000)):
            self._subscriptions()
        now = time.monotonic()
        rev = self.fleet.revision
        if rev != revision or now >= next_resend:
            force = now >= next_resend
            revision = rev
            for r in sorted(self.robots):
                self._send(r, force)
            if force:
                next_resend = now + self.cfg.resend_s
        return revision, next_resend


def serve_main(cfg: PublisherConfig) -> None:
    print(describe(cfg), flush=True)
    stop = threading.Event()
    on_stop_signals(stop.set)
    ann = Announcer(cfg)
    print(f"announcing on {ann.address}; fleet state {ann.fleet.where}", flush=True)
    try:
        ann.run(stop)
    finally:
        ann.close()


def publish_main(cfg: PublisherConfig) -> dict:
    check(cfg.artifact is not None and Path(cfg.artifact).exists(), "artifact",
          f"{cfg.artifact} is not an exported .onnx; run `vlac actor export` first")
    meta = read_meta(Path(cfg.artifact))
    version = cfg.version if cfg.version is not None else int(meta["policy_version"])
    pub = Publisher(cfg)
    m = pub.upload(Path(cfg.artifact), version, meta=meta)
    print(f"published version {m.version} (parent {m.parent_version}, {m.size} bytes, "
          f"sha256 {m.sha256[:12]}); promote={cfg.promote}", flush=True)
    return {"version": m.version, "size": m.size, "sha256": m.sha256}

"""Streams spooled chunks to ingest over an authenticated ZeroMQ DEALER socket.

At-least-once delivery: a chunk stays in the spool until ingest acknowledges it as durably
stored; unacknowledged chunks are sent again after ``ack_timeout_s`` and after every
reconnect. Ingest drops the duplicates this causes, so the store holds every chunk exactly once.

The sender runs in its own thread so the robot loop never waits on the network; the robot
only writes to the spool. Every socket call is non-blocking or has a timeout. A refused
handshake (wrong protocol, config mismatch, robot not allowed) is fatal and surfaces as
SenderError from ``wait_drained``/``raise_if_failed``; a chunk that ingest rejects as invalid
is moved to the spool's ``rejected/`` folder with the reason, and the rest keep flowing.

Shards: with ``ingest_endpoints`` (several ingest processes sharing one episode store), the
robot streams to the one at its shard: ``ingest_shard`` if pinned, else a stable hash of its
id (``vlac.shared.shards``). When that one gives no accepted handshake for ``failover_s``
(killed, host down), the sender moves to the next endpoint and sends it everything its spool
still holds; it stays there until that one fails in turn. Nothing is lost (the spool keeps a
chunk until some shard acknowledged it) and nothing is stored twice (any shard takes any
robot, and the store drops a chunk another shard already stored). Moving a robot by hand is
the same: restart it with another ``ingest_shard``; its spool goes to the new shard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zmq
from zmq.utils.monitor import recv_monitor_message

from vlac.edge.transport.spool import Spool
from vlac.shared import keys, wire
from vlac.shared.config import check, check_id, opt
from vlac.shared.shards import home_shard

log = logging.getLogger(__name__)


class SenderError(RuntimeError):
    """The sender cannot go on (handshake refused): the message says why and what to do."""


@dataclass
class SenderConfig:
    robot_id: str = opt("robot-0", "This robot's id; must match its key file's name.")
    ingest_address: str = opt("tcp://127.0.0.1:5555", "ZeroMQ address of the ingest service "
                              "(when ingest_endpoints is empty).")
    ingest_endpoints: list[str] = opt([], "ZeroMQ addresses of the ingest shards, A,B,...: "
                                      "the robot uses the one at its shard and fails over to "
                                      "the next; empty: ingest_address alone.")
    ingest_shard: int = opt(-1, "Pin this robot to shard K of ingest_endpoints (-1: a "
                            "stable hash of robot_id); failover_s still moves it if K fails.")
    failover_s: float = opt(10.0, "With several ingest_endpoints: move to the next one after "
                            "this many seconds without an accepted handshake (0: never).")
    robot_secret_key: Path = opt(Path("keys/robots/robot-0.key_secret"),
                                 "This robot's CURVE secret key file (vlac keys generate).")
    server_public_key: Path = opt(Path("keys/server/ingest.key"),
                                  "The ingest server's CURVE public key file.")
    spool_dir: Path = opt(Path(".cache/spool/robot-0"), "Folder of the durable on-disk spool.")
    spool_max_bytes: int = opt(2 * 1024**3, "Spool size limit in bytes.")
    spool_max_chunks: int = opt(100_000, "Spool limit in number of chunks.")
    spool_on_full: Literal["block", "drop_oldest", "error"] = opt(
        "block", "What a full spool does: block (wait), drop_oldest (episodes), error.")
    spool_block_timeout_s: float = opt(60.0, "How long a blocked put waits before failing.")
    image_codec: Literal["zstd", "none"] = opt(
        wire.DEFAULT_IMAGE_CODEC, "How camera frames are spooled and sent: zstd (a chunk's "
        "frames of a camera as one zstd block, about 10x smaller) or none (raw; for an ingest "
        "older than wire schema 2).")
    window: int = opt(32, "Chunks in flight without an acknowledgement.")
    ack_timeout_s: float = opt(5.0, "Resend a chunk not acknowledged within this time.")
    handshake_timeout_s: float = opt(3.0, "Retry the handshake if unanswered this long.")
    heartbeat_s: float = opt(2.0, "Seconds between heartbeats.")

    def __post_init__(self) -> None:
        self.robot_secret_key = Path(self.robot_secret_key)
        self.server_public_key = Path(self.server_public_key)
        self.spool_dir = Path(self.spool_dir)
        check_id(self.robot_id, "robot_id")
        for name, addr in [("ingest_address", self.ingest_address),
                           *(("ingest_endpoints", a) for a in self.ingest_endpoints)]:
            check(addr.startswith(("tcp://", "ipc://", "inproc://")), name,
                  f"{addr!r} is not a ZeroMQ address like tcp://host:5555")
        check(-1 <= self.ingest_shard < max(1, len(self.ingest_endpoints)), "ingest_shard",
              f"{self.ingest_shard} is not a shard of the {len(self.ingest_endpoints)} "
              "ingest_endpoints: give 0 .. N-1, or -1 for the robot's home shard")
        check(self.failover_s >= 0, "failover_s", "must be >= 0 (0: never)")
        check(self.window >= 1, "window", "must be at least 1")
        check(self.ack_timeout_s > 0, "ack_timeout_s", "must be positive")
        check(self.handshake_timeout_s > 0, "handshake_timeout_s", "must be positive")
        check(self.heartbeat_s > 0, "heartbeat_s", "must be positive")
        check(self.spool_on_full in ("block", "drop_oldest", "error"), "spool_on_full",
              "use block, drop_oldest or error")
        check(self.image_codec in wire.IMAGE_CODECS, "image_codec",
              f"use one of {', '.join(wire.IMAGE_CODECS)}")

    def endpoints(self) -> list[str]:
        return list(self.ingest_endpoints) or [self.ingest_address]

    def shard(self) -> int:
        """The index into ``endpoints()`` this robot starts on."""
        if self.ingest_shard >= 0:
            return self.ingest_shard
        return home_shard(self.robot_id, len(self.endpoints()))

    def make_spool(self) -> Spool:
        return Spool(self.spool_dir, max_bytes=self.spool_max_bytes,
                     max_chunks=self.spool_max_chunks, on_full=self.spool_on_full,
                     block_timeout_s=self.spool_block_timeout_s)


@dataclass
class SenderStats:
    sent: int = 0
    resent: int = 0
    acked: int = 0
    duplicates: int = 0
    rejected: int = 0
    handshakes: int = 0
    failovers: int = 0
    last_error: str = ""


_MONITOR_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_DISCONNECTED)


@dataclass
class _Link:
    """The sender thread's view of its connection."""

    inflight: dict[tuple[str, int], float] = field(default_factory=dict)
    """(episode, seq) -> when to resend it if no ack came."""
    hs_sent_at: float = -1e9
    auth_refused: bool = False
    ready_at: float = field(default_factory=time.monotonic)
    """When the connection was last ready (or made): how long it has been failing."""


class Sender:
    """Background thread: spool -> ingest. Use as a context manager or start()/stop()."""

    def __init__(self, cfg: SenderConfig, spool: Spool, spec: wire.RobotSpec,
                 policy_version: Callable[[], int] = lambda: 0,
                 ctx: zmq.Context | None = None,
                 update_error: Callable[[], str] = lambda: "",
                 announcements: Callable[[], tuple[int, int]] = lambda: (0, 0)) -> None:
        self.cfg = cfg
        self.spool = spool
        self.spec = spec
        self.policy_version = policy_version
        self.update_error = update_error
        self.announcements = announcements
        """(refused, replayed) weight announcements counted by the robot's updater."""
        self.stats = SenderStats()
        self._ctx = ctx or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fatal: str | None = None
        self._state = "connecting"
        self._pair = keys.load_pair(cfg.robot_secret_key)
        self._server_pub = keys.load_public(cfg.server_public_key)
        self._endpoints = cfg.endpoints()
        self.shard = cfg.shard()
        """Index into the endpoints of the ingest shard streamed to now."""

    @property
    def address(self) -> str:
        return self._endpoints[self.shard]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Sender:
        self._thread = threading.Thread(target=self._run, name=f"sender-{self.cfg.robot_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Sender:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> bool:
        return self._state == "ready"

    def raise_if_failed(self) -> None:
        if self._fatal:
            raise SenderError(self._fatal)

    def wait_drained(self, timeout: float) -> bool:
        """Wait until every spooled chunk is acknowledged; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.raise_if_failed()
            if self.spool.wait_empty(min(0.2, max(0.0, deadline - time.monotonic()))):
                return True
        self.raise_if_failed()
        return self.spool.depth == 0

    # ------------------------------------------------------------------ thread
    def _socket(self) -> tuple[zmq.Socket, zmq.Socket]:
        sock = self._ctx.socket(zmq.DEALER)
        sock.curve_secretkey = self._pair.secret
        sock.curve_publickey = self._pair.public
        sock.curve_serverkey = self._server_pub
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # never queue on a half-open connection
        sock.setsockopt(zmq.SNDHWM, self.cfg.window * 2)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        sock.connect(self.address)
        return sock, monitor

    def _failing(self, link: _Link, now: float) -> bool:
        """Whether this shard has not been ready for ``failover_s`` (and there is another)."""
        if self._state == "ready":
            link.ready_at = now
            return False
        return len(self._endpoints) > 1 and self.cfg.failover_s > 0 and \
            now - link.ready_at > self.cfg.failover_s

    def _fail_over(self, sock: zmq.Socket, monitor: zmq.Socket,
                   poller: zmq.Poller) -> tuple[zmq.Socket, zmq.Socket]:
        """Close the connection to this shard and connect to the next one; the new
        connection's handshake and resend of the whole spool follow as after any reconnect."""
        for s in (sock, monitor):
            poller.unregister(s)
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        old = self.address
        self.shard = (self.shard + 1) % len(self._endpoints)
        self.stats.failovers += 1
        self._state = "handshake"
        log.warning("%s: no accepted handshake from ingest %s for %.0f s; moving to shard %d "
                    "(%s) with %d spooled chunks", self.cfg.robot_id, old, self.cfg.failover_s,
                    self.shard, self.address, self.spool.depth)
        sock, monitor = self._socket()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        return sock, monitor

    def _send(self, sock: zmq.Socket, data: bytes) -> bool:
        try:
            sock.send(data, zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _run(self) -> None:
        sock, monitor = self._socket()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        link = _Link()
        next_hb = 0.0
        self._state = "handshake"
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._failing(link, now):
                    sock, monitor = self._fail_over(sock, monitor, poller)
                    link = _Link()
                if self._state == "handshake" and \
                        now - link.hs_sent_at > self.cfg.handshake_timeout_s:
                    self._handshake(sock, link, now)
                if self._state == "ready":
                    self._fill(sock, link.inflight, now)
                if now >= next_hb and self._state == "ready":
                    self._send(sock, wire.encode(self._heartbeat()))
                    next_hb = now + self.cfg.heartbeat_s
                events = dict(poller.poll(20))
                if monitor in events:
                    while monitor.poll(0):
                        self._on_event(recv_monitor_message(monitor)["event"], link)
                if sock in events:
                    while sock.poll(0):
                        self._handle(sock.recv(copy=False).buffer, link.inflight)
                        if self._fatal:
                            return
        except Exception as e:  # surface, never swallow
            self._fatal = f"sender thread crashed: {type(e).__name__}: {e}"
            log.exception("sender %s crashed", self.cfg.robot_id)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def _handshake(self, sock: zmq.Socket, link: _Link, now: float) -> None:
        """Send (or resend, after ``handshake_timeout_s`` without a reply) the handshake."""
        if link.hs_sent_at > 0 and not link.auth_refused:
            self._note(f"no handshake reply from {self.address} within "
                       f"{self.cfg.handshake_timeout_s}s; is ingest running and "
                       "is server_public_key its key? Retrying")
        hs = wire.Handshake(protocol=wire.PROTOCOL_VERSION, robot_id=self.cfg.robot_id,
                            config_hash=self.spec.config_hash(), spec=self.spec,
                            software="vlac-fleet")
        if self._send(sock, wire.encode(hs)):
            link.hs_sent_at = now
        else:  # nothing took it: try again shortly
            link.hs_sent_at = now - self.cfg.handshake_timeout_s + 0.2

    def _on_event(self, ev: int, link: _Link) -> None:
        """A socket monitor event: connections made, refused and lost."""
        if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            link.auth_refused = False
            # A new connection (first, or after ingest restarted): its session must be set
            # up again and unacked chunks resent.
            self._state, link.hs_sent_at = "handshake", -1e9
            link.inflight.clear()
        elif ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            link.auth_refused = True
            self._note(f"ingest at {self.address} refused this robot's key: add "
                       f"{self.cfg.robot_id}.key to its allow-list (KEYS/robots); retrying")
        elif ev == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._note("CURVE handshake failed: the server public key is probably wrong")
        elif ev == zmq.EVENT_DISCONNECTED:
            self._state = "handshake"
            link.inflight.clear()

    def _heartbeat(self) -> wire.Heartbeat:
        refused, replayed = self.announcements()
        return wire.Heartbeat(robot_id=self.cfg.robot_id,
                              policy_version=int(self.policy_version()),
                              spool_depth=self.spool.depth, spool_bytes=self.spool.nbytes,
                              time=time.time(), update_error=self.update_error()[:500],
                              announcements_refused=max(0, int(refused)),
                              announcements_replayed=max(0, int(replayed)))

    def _note(self, msg: str) -> None:
        if msg != self.stats.last_error:
            log.warning("%s: %s", self.cfg.robot_id, msg)
        self.stats.last_error = msg

    def _fill(self, sock: zmq.Socket, inflight: dict, now: float) -> None:
        for key, deadline in list(inflight.items()):
            if now > deadline:
                del inflight[key]
                self.stats.resent += 1
        if len(inflight) >= self.cfg.window:
            return
        for entry in self.spool.pending():
            if len(inflight) >= self.cfg.window:
                break
            if entry.key in inflight:
                continue
            try:
                data = self.spool.read(entry)
            except FileNotFoundError:  # acked or dropped meanwhile
                continue
            if not self._send(sock, data):
                break
            inflight[entry.key] = now + self.cfg.ack_timeout_s
            self.stats.sent += 1

    def _handle(self, frame: memoryview, inflight: dict) -> None:
        try:
            msg = wire.decode(frame, expect=(wire.HandshakeReply, wire.Ack, wire.Error))
        except wire.WireError as e:
            self._note(f"undecodable reply from ingest ignored: {e}")
            return
        if isinstance(msg, wire.HandshakeReply):
            if msg.accepted:
                self._state = "ready"
                self.stats.handshakes += 1
                self.stats.last_error = ""
                log.info("%s: connected to ingest %s", self.cfg.robot_id, msg.ingest_id)
            else:
                self._fatal = (f"ingest refused the handshake of {self.cfg.robot_id}: "
                               f"{msg.reason}")
                log.error(self._fatal)
        elif isinstance(msg, wire.Ack):
            inflight.pop((msg.episode_id, msg.seq), None)
            self.spool.remove(msg.episode_id, msg.seq)
            self.stats.acked += 1
            self.stats.duplicates += msg.status == "duplicate"
        elif isinstance(msg, wire.Error):
            key = (msg.episode_id, msg.seq)
            if msg.code == "handshake_required":
                self._state = "handshake"
                inflight.clear()
            elif msg.retry:
                self._note(f"ingest asked to retry {key}: {msg.message}")
                inflight[key] = time.monotonic() + self.cfg.ack_timeout_s
            elif msg.seq >= 0:
                inflight.pop(key, None)
                self.stats.rejected += 1
                self.spool.reject(msg.episode_id, msg.seq, f"{msg.code} ({msg.field}): "
                                  f"{msg.message}")
            else:
                self._note(f"ingest error {msg.code}: {msg.message}")


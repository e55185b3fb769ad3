"""Ingest: the cloud end of the rollout stream.

A ZeroMQ ROUTER socket with CURVE encryption and authentication. Only robots whose public
key is in the allow-list folder can connect (ZAP handler); a connection's messages must carry
the robot id its key was enrolled under. Each connection starts with a handshake (protocol
version, robot id, config hash + spec) and is refused with a reason on any mismatch. Chunks
are validated, deduplicated by (robot_id, episode_id, seq), written durably into the episode
store, and only then acknowledged. A bad message gets an Error reply naming the field, is
logged, and touches nothing else: one loop serves every robot, fair-queued by ZeroMQ.

Shards: several ingest processes (``--shard K/N``, one per host or port) may share one
episode store and one fleet state; robots pick theirs (``vlac.edge.transport.sender``). A
shard accepts any allowed robot, not only those whose home shard it is, and only logs a
robot that came from elsewhere. Refusing them would buy nothing for correctness, since the
store keeps a chunk once whichever shard writes it and whichever shard stores an episode's
last chunk completes it, and it would turn every failover into an outage until each
robot's config and each shard's idea of who belongs where agree again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import yaml
import zmq
from zmq.auth.thread import ThreadAuthenticator

from vlac.cloud.store.base import ChunkWrite
from vlac.cloud.store.location import open_episode_store, store_location
from vlac.shared import keys, wire
from vlac.shared.config import check, describe, opt
from vlac.shared.episode import StepColumns, validate_chunk
from vlac.shared.shards import home_shard, parse_shard
from vlac.shared.signals import on_stop_signals

log = logging.getLogger(__name__)


@dataclass
class IngestConfig:
    bind: str = opt("tcp://127.0.0.1:5555", "ZeroMQ address to listen on.")
    store_root: Path | str = opt(Path(".cache/store"), "The episode store: a folder or "
                                 "s3://BUCKET/PREFIX?endpoint=URL.")
    server_secret_key: Path = opt(Path("keys/server/ingest.key_secret"),
                                  "Ingest's CURVE secret key file (vlac keys generate).")
    allowed_keys_dir: Path = opt(Path("keys/robots"),
                                 "Folder of robot public keys (*.key): the allow-list.")
    spec_file: Path | None = opt(None, "YAML robot spec robots must match; default: Meta-World.")
    batch_max: int = opt(64, "Most messages handled per loop turn.")
    status_every_s: float = opt(10.0, "Seconds between status log lines (0: never).")
    fsync: bool = opt(True, "fsync every chunk before acknowledging it (keep on).")
    duration_s: float = opt(0.0, "Stop after this many seconds (0: run until stopped).")
    fleet_dir: Path | None = opt(None, "Fleet state folder: heartbeats (running version, "
                                 "update errors) are recorded there for `vlac fleet status`.")
    fleet_url: str = opt("", "Fleet state in PostgreSQL instead of fleet_dir/fleet.db "
                         "(SQLite): postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE; empty: "
                         "SQLite, or no heartbeats without a fleet_dir.")
    shard: str = opt("", "This process's shard K/N when N ingest processes share the store "
                     "(e.g. 0/2): named in its id and logs; it takes any robot.")
    staging_max_age_s: float = opt(86400.0, "Drop episodes that stayed incomplete this many "
                                   "seconds after their last chunk (a robot that crashed "
                                   "mid-episode never sends the rest); 0: keep them forever.")

    def __post_init__(self) -> None:
        self.store_root = store_location(self.store_root)
        self.server_secret_key = Path(self.server_secret_key)
        self.allowed_keys_dir = Path(self.allowed_keys_dir)
        if self.spec_file is not None:
            self.spec_file = Path(self.spec_file)
            check(self.spec_file.exists(), "spec_file", f"{self.spec_file} does not exist")
        check(self.bind.startswith(("tcp://", "ipc://", "inproc://")), "bind",
              f"{self.bind!r} is not a ZeroMQ address like tcp://0.0.0.0:5555")
        check(self.batch_max >= 1, "batch_max", "must be at least 1")
        if self.fleet_url:
            from vlac.cloud.fleet.state import check_fleet_url

            check_fleet_url(self.fleet_url)
        check(self.staging_max_age_s >= 0, "staging_max_age_s", "must be >= 0 (0: never)")
        try:
            parse_shard(self.shard)
        except ValueError as e:
            check(False, "shard", str(e))

    def spec(self) -> wire.RobotSpec:
        if self.spec_file is None:
            return wire.DEFAULT_SPEC
        return msgspec.convert(yaml.safe_load(self.spec_file.read_text()), wire.RobotSpec)


@dataclass
class RobotStatus:
    robot_id: str
    connected_at: float = 0.0
    last_seen: float = 0.0
    policy_version: int = -1
    spool_depth: int = 0
    chunks: int = 0
    duplicates: int = 0
    steps: int = 0
    errors: Counter = field(default_factory=Counter)


@dataclass
class _Pending:
    write: ChunkWrite
    reply: wire.Message


@dataclass
class _Unvalidated:
    """A chunk that passed every cheap check; validating it (decompressing its camera
    blocks, checking every value) runs on the validation threads with the turn's others."""

    robot: str
    msg: wire.EpisodeChunk
    spec: wire.RobotSpec


@dataclass
class _Session:
    robot_id: str
    spec: wire.RobotSpec


def _try_validate(u: _Unvalidated) -> StepColumns | Exception:
    try:
        return validate_chunk(u.msg, u.spec)
    except Exception as e:  # returned, not raised: the serving thread turns it into a reply
        return e


class Ingest:
    """Serve robots until ``stop()``; usable in a thread (tests) or as the main process."""

    def __init__(self, cfg: IngestConfig, ctx: zmq.Context | None = None) -> None:
        self.cfg = cfg
        self.expected_spec = cfg.spec()
        self.store = open_episode_store(cfg.store_root, fsync=cfg.fsync)
        self.allowed = keys.allow_list(cfg.allowed_keys_dir)
        self._pair = keys.load_pair(cfg.server_secret_key)
        self._ctx = ctx or zmq.Context()
        self._own_ctx = ctx is None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._validators: ThreadPoolExecutor | None = None
        self.sessions: dict[bytes, _Session] = {}
        self.robots: dict[str, RobotStatus] = {}
        self.fleet = None
        if cfg.fleet_dir is not None or cfg.fleet_url:
            from vlac.cloud.fleet.state import open_fleet_state

            self.fleet = open_fleet_state(cfg.fleet_dir, cfg.fleet_url)
        self.errors: Counter = Counter()
        self.address = cfg.bind
        self.shard = parse_shard(cfg.shard)
        tag = f"-shard{self.shard[0]}of{self.shard[1]}" if self.shard else ""
        self.ingest_id = f"ingest{tag}-{int(time.time())}"

    def stop(self) -> None:
        self._stop.set()

    def wait_ready(self, timeout: float = 10.0) -> str:
        if not self._ready.wait(timeout):
            raise TimeoutError("ingest did not start listening")
        return self.address

    # ------------------------------------------------------------------ loop
    def serve(self) -> dict:
        with self.store.writer_lock(exclusive=False):
            return self._serve()

    def _serve(self) -> dict:
        auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(f"{__name__}.auth"))
        auth.start()
        auth.configure_curve(domain="*", location=str(self.cfg.allowed_keys_dir))
        sock = self._socket()
        log.info("ingest listening on %s, %d robots allowed, store %s", self.address,
                 len(self.allowed), self.cfg.store_root)
        self._ready.set()
        started = time.monotonic()
        next_status = started + self.cfg.status_every_s
        next_gc = started
        try:
            while not self._stop.is_set():
                if self.cfg.duration_s and time.monotonic() - started > self.cfg.duration_s:
                    break
                if self.cfg.staging_max_age_s and time.monotonic() >= next_gc:
                    self._collect_staging()
                    next_gc = time.monotonic() + min(600.0, self.cfg.staging_max_age_s / 4)
                if sock.poll(100):
                    self._turn(sock)
                if self.cfg.status_every_s and time.monotonic() > next_status:
                    log.info("ingest: %s", self.summary())
                    next_status = time.monotonic() + self.cfg.status_every_s
        finally:
            sock.close(linger=0)
            auth.stop()
            if self._validators is not None:
                self._validators.shutdown(wait=True)
                self._validators = None
            if self._own_ctx:
                self._ctx.term()
        return self.summary()

    def _socket(self) -> zmq.Socket:
        """The CURVE ROUTER socket, bound (to a random port when ``bind`` ends in :0)."""
        sock = self._ctx.socket(zmq.ROUTER)
        sock.curve_server = True
        sock.curve_secretkey = self._pair.secret
        sock.curve_publickey = self._pair.public
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, wire.HARD_MAX_BYTES)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 1_000)
        if self.cfg.bind.endswith(":0"):
            port = sock.bind_to_random_port(self.cfg.bind.rsplit(":", 1)[0])
            self.address = f"{self.cfg.bind.rsplit(':', 1)[0]}:{port}"
        else:
            sock.bind(self.cfg.bind)
        return sock

    def _turn(self, sock: zmq.Socket) -> None:
        """One loop turn: up to ``batch_max`` messages in, their chunks written together
        (group commit), then every reply out."""
        replies: list[tuple[zmq.Frame, wire.Message | _Pending | _Unvalidated]] = []
        for _ in range(self.cfg.batch_max):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            reply = self._handle(frames)
            if reply is not None:
                replies.append((frames[0], reply))
        self._validate_all(replies)
        self._commit([r for _, r in replies if isinstance(r, _Pending)])
        for ident, reply in replies:
            msg = reply.reply if isinstance(reply, _Pending) else reply
            try:
                sock.send_multipart([ident, wire.encode(msg)], zmq.NOBLOCK)
            except zmq.ZMQError as e:  # peer gone or its queue full: it resends
                log.debug("reply to a robot dropped: %s", e)

    def _collect_staging(self) -> None:
        try:
            dropped = self.store.collect_staging(self.cfg.staging_max_age_s)
        except OSError as e:
            log.error("could not collect abandoned episodes from staging: %s", e)
            return
        if dropped:
            log.warning("dropped %d episodes that stayed incomplete for %.0f s",
                        len(dropped), self.cfg.staging_max_age_s)

    def summary(self) -> dict:
        return {"robots": len(self.robots),
                "chunks": sum(r.chunks for r in self.robots.values()),
                "steps": sum(r.steps for r in self.robots.values()),
                "duplicates": sum(r.duplicates for r in self.robots.values()),
                "errors": dict(self.errors)}

    # ------------------------------------------------------------------ messages
    def _error(self, robot: str, code: str, message: str, fld: str = "",
               episode_id: str = "", seq: int = -1, retry: bool = False) -> wire.Error:
        message = message if len(message) <= 2000 else message[:2000] + " ..."
        self.errors[code] += 1
        if robot in self.robots:
            self.robots[robot].errors[code] += 1
        log.warning("refused a message from %s: %s: %s%s", robot or "?", code, message,
                    f" (field {fld})" if fld else "")
        return wire.Error(code=code, message=message, field=fld, episode_id=episode_id,
                          seq=seq, retry=retry)

    def _handle(self, frames: list[zmq.Frame]) -> wire.Message | _Unvalidated | None:
        """One frame in, at most one reply out. Whatever one frame raises while it is
        decoded, validated or checked becomes an Error reply on its own connection: a
        hostile or buggy robot can never stop the loop that serves every other robot."""
        try:
            return self._handle_frame(frames)
        except Exception as e:
            robot = self._robot_of(frames[-1]) if frames else ""
            log.exception("a frame from %s raised while being handled", robot or "?")
            return self._error(robot, "internal", f"ingest could not handle this message "
                               f"({type(e).__name__}: {e}); it was not stored. Check the "
                               "robot's software version, and report it if it persists")

    def _robot_of(self, payload: zmq.Frame) -> str:
        """The robot a frame's CURVE key is enrolled as ('' when unknown)."""
        try:
            key = payload.get("User-Id").encode()
        except zmq.ZMQError:  # no ZAP identity: cannot happen on a CURVE socket
            key = b""
        return self.allowed.get(key, "")

    def _handle_frame(self, frames: list[zmq.Frame]) -> wire.Message | _Unvalidated | None:
        if len(frames) != 2:
            return self._error("", "malformed", f"expected one frame per message, got "
                               f"{len(frames) - 1}")
        ident, payload = frames
        robot = self._robot_of(payload)
        if not robot:  # the allow-list changed under a live connection
            return self._error("", "unknown_robot", "this key is not on the allow-list")
        try:
            msg = wire.decode(payload.buffer, expect=(wire.Handshake, wire.EpisodeChunk,
                                                      wire.Heartbeat))
        except wire.WireError as e:
            return self._error(robot, e.code, e.detail, e.field)
        if isinstance(msg, wire.Handshake):
            return self._handshake(ident.bytes, robot, msg)
        session = self.sessions.get(ident.bytes)
        if isinstance(msg, wire.Heartbeat):
            if session is not None:
                st = self.robots[robot]
                st.last_seen, st.policy_version = time.time(), msg.policy_version
                st.spool_depth = msg.spool_depth
                if self.fleet is not None:
                    try:
                        self.fleet.robot_seen(
                            robot, msg.policy_version, msg.update_error, msg.spool_depth,
                            announcements_refused=msg.announcements_refused,
                            announcements_replayed=msg.announcements_replayed)
                    except Exception as e:  # fleet status must never stop ingest
                        log.warning("could not record %s's heartbeat in the fleet state: %s",
                                    robot, e)
            return None
        assert isinstance(msg, wire.EpisodeChunk)
        return self._chunk(ident.bytes, robot, session, msg)

    def _handshake(self, ident: bytes, robot: str, msg: wire.Handshake) -> wire.HandshakeReply:
        reason = ""
        if msg.protocol != wire.PROTOCOL_VERSION:
            reason = (f"protocol version {msg.protocol} is not supported; ingest speaks "
                      f"{wire.PROTOCOL_VERSION}. Run the same vlac-fleet release on both sides")
        elif msg.robot_id != robot:
            reason = (f"robot_id {msg.robot_id!r} does not match the key, which is enrolled as "
                      f"{robot!r}. Set robot_id to {robot!r} or use that robot's own key")
        elif msg.config_hash != msg.spec.config_hash():
            reason = (f"config hash {msg.config_hash} does not match the spec sent "
                      f"({msg.spec.config_hash()}); the robot's software is inconsistent")
        elif msg.spec != self.expected_spec:
            reason = ("config hash mismatch: robot has " + msg.config_hash + ", ingest expects "
                      + self.expected_spec.config_hash() + " ("
                      + "; ".join(self.expected_spec.differences(msg.spec))
                      + "). Align the robot's camera/action settings with ingest's spec_file")
        if reason:
            self._error(robot, "handshake_refused", reason)
            return wire.HandshakeReply(accepted=False, reason=reason, ingest_id=self.ingest_id)
        for old in [i for i, s in self.sessions.items() if s.robot_id == robot]:
            del self.sessions[old]  # a robot has one live connection; drop stale ones
        self.sessions[ident] = _Session(robot, msg.spec)
        st = self.robots.setdefault(robot, RobotStatus(robot))
        st.connected_at = st.last_seen = time.time()
        log.info("robot %s connected (config %s)", robot, msg.config_hash)
        if self.shard and home_shard(robot, self.shard[1]) != self.shard[0]:
            log.info("robot %s belongs to shard %d by its id and came to shard %d (its shard "
                     "failed, or its config pins this one)", robot,
                     home_shard(robot, self.shard[1]), self.shard[0])
        return wire.HandshakeReply(accepted=True, ingest_id=self.ingest_id)

    def _chunk(self, ident: bytes, robot: str, session: _Session | None,
               msg: wire.EpisodeChunk) -> wire.Message | _Unvalidated:
        ep, seq = msg.episode_id, msg.seq
        if session is None:
            return wire.Error(code="handshake_required", message="send a handshake first "
                              "(ingest may have restarted)", episode_id=ep, seq=seq, retry=True)
        if msg.robot_id != robot:
            return self._error(robot, "robot_id_mismatch", f"chunk says robot "
                               f"{msg.robot_id!r} but comes from {robot!r}", "robot_id", ep, seq)
        st = self.robots[robot]
        st.last_seen = time.time()
        if self.store.has(robot, ep, seq):
            st.duplicates += 1
            return wire.Ack(robot_id=robot, episode_id=ep, seq=seq, status="duplicate")
        return _Unvalidated(robot, msg, session.spec)

    def _validate_all(self, replies: list[tuple[zmq.Frame, wire.Message | _Pending
                                                | _Unvalidated]]) -> None:
        """Validate the turn's chunks in place, on the validation threads when there are
        several (zstd and numpy release the GIL: decompression is most of ingest's time).
        The threads only validate; replies, counters and logs stay on this thread."""
        todo = [i for i, (_, r) in enumerate(replies) if isinstance(r, _Unvalidated)]
        if len(todo) > 1:
            if self._validators is None:
                self._validators = ThreadPoolExecutor(2, thread_name_prefix="ingest-validate")
            results = list(self._validators.map(_try_validate, [replies[i][1] for i in todo]))
        else:
            results = [_try_validate(replies[i][1]) for i in todo]
        for i, result in zip(todo, results, strict=True):
            replies[i] = (replies[i][0], self._validated(replies[i][1], result))

    def _validated(self, u: _Unvalidated, result: StepColumns | Exception
                   ) -> wire.Message | _Pending:
        msg, robot = u.msg, u.robot
        ep, seq = msg.episode_id, msg.seq
        if isinstance(result, wire.WireError):
            return self._error(robot, result.code, result.detail, result.field, ep, seq)
        if isinstance(result, Exception):  # as in _handle: a surprise is its own refusal
            log.error("a frame from %s raised while being validated", robot, exc_info=result)
            return self._error(robot, "internal", f"ingest could not validate this chunk "
                               f"({type(result).__name__}: {result}); it was not stored. "
                               "Check the robot's software version, and report it if it "
                               "persists", "", ep, seq)
        return _Pending(ChunkWrite(robot, ep, seq, msg.task, result, msg.final, msg.first_step,
                                   msg.source, msg.task_id),
                        wire.Ack(robot_id=robot, episode_id=ep, seq=seq, status="stored"))

    def _commit(self, pending: list[_Pending]) -> None:
        """Write a batch durably; only then do its acks go out (group commit)."""
        if not pending:
            return
        try:
            written = self.store.write_chunks([p.write for p in pending])
        except OSError as e:
            log.error("store write failed for %d chunks: %s", len(pending), e)
            for p in pending:
                p.reply = self._error(p.write.robot_id, "store_unavailable",
                                      f"the store could not write: {e}", "",
                                      p.write.episode_id, p.write.seq, retry=True)
            return
        except Exception:  # one chunk the store cannot take: find it, keep the others
            log.exception("a batch of %d chunks could not be stored; storing them one by "
                          "one", len(pending))
            if len(pending) == 1:
                self._unstorable(pending[0])
            else:
                for p in pending:
                    self._commit([p])
            return
        for p, new in zip(pending, written, strict=True):
            w, st = p.write, self.robots[p.write.robot_id]
            if isinstance(new, wire.WireError):
                p.reply = self._error(w.robot_id, new.code, new.detail, new.field,
                                      w.episode_id, w.seq)
            elif new:
                st.chunks += 1
                st.steps += len(w.steps)
            else:  # the same chunk twice in one batch
                st.duplicates += 1
                p.reply = msgspec.structs.replace(p.reply, status="duplicate")

    def _unstorable(self, p: _Pending) -> None:
        w = p.write
        log.error("%s's chunk %s/%d cannot be stored (traceback above)", w.robot_id,
                  w.episode_id, w.seq)
        p.reply = self._error(w.robot_id, "unstorable", "the store raised on this chunk, so "
                              "it was not stored (see ingest's log); it will not be accepted "
                              "as it is", "", w.episode_id, w.seq)


def main(cfg: IngestConfig) -> dict:
    """Run ingest in the foreground until SIGINT/SIGTERM (or ``duration_s``)."""
    print(describe(cfg), flush=True)
    ingest = Ingest(cfg)
    on_stop_signals(ingest.stop)
    summary = ingest.serve()
    print(f"ingest stopped: {summary}", flush=True)
    return summary

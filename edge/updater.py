"""The robot's weight updater: new policy versions arrive, are verified, and swap in safely.

A background thread subscribes to the publisher's announcements on the robot's own topic
(subscribing again on every reconnect is how it asks for its latest assignment). Of all
announcements waiting it takes the newest *genuine* one (highest signed sequence) and:

1. checks the assignment's signature (the publisher's ed25519 key from enrolment), that it is
   addressed to this robot and agrees with its unsigned wrapper, that its sequence is after the
   last one applied (replays are refused) and that it is not older than the running version
   unless signed as a downgrade (fleet rollback, pin, canary end);
2. checks the manifest's signature and gets the artifact into ``state_dir/vN/``
   (``vlac.edge.fetch``): rebuilt from a delta against the running version when the version's
   signed delta index has one, else downloaded whole (the reason is logged), and in both
   cases checked against the manifest's size and sha256;
3. loads it and health-checks it on a recorded observation (the last one the agent saw, kept
   in ``state_dir/health_obs.npz``; a blank frame from the observation spec when there is
   none): outputs finite, tokens in range, the version inside the artifact matches;
4. hands it over: the agent calls ``take()`` between episodes and swaps (or, with
   ``auto_swap``, the updater swaps right away: updater-only robots).

Any failure keeps the running (last-known-good) policy and is reported through ``error``
(sent in heartbeats). A download that fails for a transient reason (object store down,
truncated transfer) is retried with backoff while it is still the newest assignment; a bad
signature, a corrupted artifact (after one fresh download) or a failed health check is final
for that assignment. ``state.json`` keeps the running version, its artifact and the last
sequence, so a restarted robot resumes its last-known-good policy and still refuses replays.

The announcement channel itself is unauthenticated (everything on it is signed), so anything
that does not verify (unsigned or badly signed, another robot's, undecodable, an unsigned
wrapper that disagrees with the signed assignment) changes nothing: it is counted in
``announcements_refused`` and logged, and never hides a genuine announcement of the same batch,
whatever sequence its wrapper claims. A genuinely signed assignment older than the last one
applied is counted in ``announcements_replayed``; a re-send of the last one (the publisher
re-sends the current assignment on every (re)subscribe) is normal and not counted. Both counts
travel in heartbeats to ``vlac fleet status``.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from vlac.edge import fetch
from vlac.edge.policy import Policy
from vlac.edge.robots.robot import Observation
from vlac.shared import manifest as mf
from vlac.shared import wire
from vlac.shared.config import check, opt
from vlac.shared.fsutil import write_atomic
from vlac.shared.objstore import ObjectStoreError, open_store

log = logging.getLogger(__name__)


@dataclass
class UpdaterConfig:
    publisher_address: str = opt("", "Publisher announcement address (empty: no updates).")
    object_store: str = opt(".cache/objects", "Where versions are downloaded from: a folder "
                            "or s3://bucket/prefix?endpoint=URL.")
    publisher_key: Path = opt(Path(".cache/keys/publisher/publisher.ed25519.pub"),
                              "The publisher's public key this robot was enrolled with.")
    state_dir: Path = opt(Path(".cache/edge/weights"), "Downloaded versions and updater state.")
    retry_s: float = opt(1.0, "First retry delay after a transient failure (doubles, max 30).")
    keep_versions: int = opt(3, "Downloaded versions kept on disk (the running one always).")

    def __post_init__(self) -> None:
        self.publisher_key, self.state_dir = Path(self.publisher_key), Path(self.state_dir)
        check(self.retry_s > 0, "retry_s", "must be > 0")
        check(self.keep_versions >= 1, "keep_versions", "must be >= 1")
        if self.publisher_address:
            check(self.publisher_key.exists(), "publisher_key",
                  f"{self.publisher_key} does not exist; copy the publisher's .pub key "
                  "(made by `vlac publisher serve`) to the robot")


class UpdateRejected(RuntimeError):
    """This assignment will not be applied (final); the message says why."""


@dataclass
class Pending:
    policy: Policy
    assignment: mf.Assignment
    manifest: mf.Manifest
    path: Path
    stats: dict


def health_check(policy: Policy, obs: Observation, version: int) -> None:
    if getattr(policy, "version", version) != version:
        raise UpdateRejected(f"the artifact says policy version {policy.version}, the signed "
                             f"manifest {version}")
    try:
        step = policy.act(obs)
    except Exception as e:
        raise UpdateRejected(f"health check failed: the policy raised {type(e).__name__}: "
                             f"{e}") from None
    bins = getattr(getattr(policy, "tokenizer", None), "bins", None)
    if not (np.all(np.isfinite(step.action)) and np.isfinite(step.logprob)):
        raise UpdateRejected("health check failed: the policy output is not finite (NaN/inf)")
    if bins is not None and not np.all((step.tokens >= 0) & (step.tokens < bins)):
        raise UpdateRejected(f"health check failed: tokens {step.tokens} outside [0, {bins})")


def blank_observation(policy: Policy) -> Observation:
    """A recorded-observation stand-in built from the artifact's observation spec."""
    meta = getattr(policy, "meta", {})
    shape = tuple(meta.get("observation", {}).get("image_shape", (128, 128, 3)))
    camera = meta.get("observation", {}).get("camera", "corner")
    dim = meta.get("observation", {}).get("proprio_dim", 4)
    task = sorted(meta.get("text_embeddings") or meta.get("tasks") or [""])[0]
    return Observation({camera: np.zeros(shape, np.uint8)}, np.zeros(dim, np.float32), task)


class WeightUpdater(threading.Thread):
    def __init__(self, cfg: UpdaterConfig, robot_id: str,
                 load_policy: Callable[[Path], Policy], *, running_version: int = -1,
                 auto_swap: bool = False,
                 on_swap: Callable[[int], None] | None = None) -> None:
        super().__init__(name=f"updater-{robot_id}", daemon=True)
        self.cfg = cfg
        self.robot_id = robot_id
        self.load_policy = load_policy
        self.auto_swap = auto_swap
        self.on_swap = on_swap
        self.store = open_store(cfg.object_store)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_path = cfg.state_dir / "state.json"
        state = self._read_state()
        self.verifier = mf.ManifestVerifier(
            mf.load_public(cfg.publisher_key),
            trusted_version=state.get("running_version", running_version),
            robot_id=robot_id, last_seq=state.get("last_seq", -1))
        self.running_path: Path | None = Path(state["artifact"]) if state.get("artifact") \
            else None
        self._signed = mf.ManifestVerifier(self.verifier.key, robot_id=robot_id)
        """Checks only that an assignment is genuine and for this robot (no order checks)."""
        self.error = ""
        self._error_is_junk = False
        self.applied = 0
        self.last_update: dict = {}
        """How the version that swapped in last got here: ``via`` (delta, full, on disk),
        ``moved`` (bytes from the object store), ``why_full``, and the seconds of the
        transfer (with the rebuild and checks), the ONNX Runtime load and the health check."""
        self.announcements_refused = 0
        """Announcements that did not verify (unsigned, bad signature, another robot's,
        undecodable, wrapper disagreeing with the signed content) since start."""
        self.announcements_replayed = 0
        """Genuinely signed announcements older than the last applied one since start."""
        self._lock = threading.Lock()
        self._pending: Pending | None = None
        self._obs: Observation | None = None
        self._done_seqs: set[int] = set()
        self._retry: tuple[wire.WeightAnnouncement, float, float] | None = None
        self._halt = threading.Event()

    # ------------------------------------------------------------------ agent side
    @property
    def running_version(self) -> int:
        return self.verifier.trusted_version

    def restore(self) -> Policy | None:
        """The last-known-good policy from a previous run, if there is one."""
        if self.running_path is None or not self.running_path.exists():
            return None
        try:
            return self.load_policy(self.running_path)
        except Exception as e:
            log.error("cannot reload last-known-good %s: %s", self.running_path, e)
            return None

    def observe(self, obs: Observation) -> None:
        """Give the updater an observation to health-check new versions on."""
        first = self._obs is None
        self._obs = obs
        if first:
            np.savez(self.cfg.state_dir / "health_obs.npz", proprio=obs.proprio,
                     task=np.array(obs.task), **{f"image_{k}": v for k, v in obs.images.items()})

    def take(self) -> Policy | None:
        """The verified new policy if one is waiting (call between episodes); it is now the
        running version."""
        with self._lock:
            p, self._pending = self._pending, None
        if p is None:
            return None
        self.verifier.commit(p.manifest, p.assignment)
        self.running_path = p.path
        self.error, self._error_is_junk = "", False
        self.applied += 1
        self.last_update = p.stats
        self._write_state()
        self._prune()
        log.info("robot %s now runs version %d", self.robot_id, p.manifest.version)
        if self.on_swap is not None:
            self.on_swap(p.manifest.version)
        return p.policy

    def stop(self) -> None:
        self._halt.set()

    # ------------------------------------------------------------------ state
    def _read_state(self) -> dict:
        try:
            return json.loads(self._state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("updater state %s unreadable (%s); starting without it",
                      self._state_path, e)
            return {}

    def _write_state(self) -> None:
        write_atomic(self._state_path, json.dumps({
            "running_version": self.verifier.trusted_version, "last_seq": self.verifier.last_seq,
            "artifact": str(self.running_path) if self.running_path else ""}).encode())

    def _prune(self) -> None:
        dirs = sorted((d for d in self.cfg.state_dir.glob("v*") if d.is_dir()),
                      key=lambda d: d.stat().st_mtime)
        keep = {self.running_path.parent} if self.running_path else set()
        for d in dirs[:-self.cfg.keep_versions]:
            if d not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def _health_obs(self, policy: Policy) -> Observation:
        if self._obs is not None:
            return self._obs
        path = self.cfg.state_dir / "health_obs.npz"
        if path.exists():
            d = np.load(path)
            return Observation({k[6:]: d[k] for k in d.files if k.startswith("image_")},
                               d["proprio"], str(d["task"]))
        return blank_observation(policy)

    # ------------------------------------------------------------------ screening
    def _refuse(self, why: str) -> None:
        """An announcement that is not verified content: counted and logged, nothing else."""
        self.announcements_refused += 1
        log.warning("robot %s refused an announcement: %s", self.robot_id, why)
        if not self.error or self._error_is_junk:  # never hide a genuine assignment's error
            self.error, self._error_is_junk = f"announcement refused: {why}", True

    def _authentic(self, ann: wire.WeightAnnouncement) -> mf.Assignment | None:
        """The signed assignment inside ``ann`` if it is genuine, for this robot and agrees
        with its unsigned wrapper; else None (counted as refused)."""
        if ann.robot_id != self.robot_id:
            self._refuse(f"addressed to robot {ann.robot_id!r}")
            return None
        try:
            a = self._signed.check_assignment(ann.assignment, ann.signature)
        except mf.ManifestError as e:
            self._refuse(f"seq {ann.seq}: {e}")
            return None
        except Exception as e:  # a malformed signature or payload must never stop the thread
            self._refuse(f"seq {ann.seq}: unverifiable ({type(e).__name__}: {e})")
            return None
        if (a.seq, a.version) != (ann.seq, ann.version):
            self._refuse(f"the unsigned wrapper says seq {ann.seq} version {ann.version}, "
                         f"the signed assignment seq {a.seq} version {a.version}")
            return None
        return a

    def _screen(self, ann: wire.WeightAnnouncement) -> mf.Assignment | None:
        """The verified assignment if it is one to act on; None for junk (counted as refused),
        replays of older signed assignments (counted) and re-sends of what was handled."""
        a = self._authentic(ann)
        if a is None:
            return None
        if a.seq < self.verifier.last_seq:
            self.announcements_replayed += 1
            log.warning("robot %s refused a replayed announcement: signed seq %d (version %d) "
                        "is older than the last applied seq %d", self.robot_id, a.seq,
                        a.version, self.verifier.last_seq)
            return None
        if a.seq == self.verifier.last_seq or a.seq in self._done_seqs:
            return None  # a re-send of something already handled (every (re)subscribe)
        with self._lock:
            if self._pending is not None and self._pending.assignment.seq >= a.seq:
                return None
        return a

    # ------------------------------------------------------------------ applying
    def _fail(self, a: mf.Assignment, message: str) -> None:
        self.error = f"version {a.version} (seq {a.seq}) refused: {message}"
        self._error_is_junk = False
        self._done_seqs.add(a.seq)
        log.error("robot %s keeps version %d: %s", self.robot_id, self.running_version,
                  self.error)

    def _fetch(self, a: mf.Assignment, m: mf.Manifest) -> fetch.Fetched:
        dest = self.cfg.state_dir / f"v{m.version:06d}" / Path(a.artifact_key).name
        base = (self.running_version, self.running_path) if self.running_path else None
        got = fetch.fetch(self.store, self.verifier, a, m, dest, base)
        if got.why_full:
            log.log(logging.INFO if got.expected else logging.WARNING,
                    "robot %s: version %d downloaded whole (%d bytes): %s", self.robot_id,
                    m.version, got.moved, got.why_full)
        return got

    def consider(self, ann: wire.WeightAnnouncement) -> None:
        """Apply one announcement if it is genuine and new; never raises. Anything that does
        not verify only counts (``announcements_refused``) and changes no other state."""
        a = self._screen(ann)
        if a is not None:
            self._apply(ann, a)

    def _apply(self, ann: wire.WeightAnnouncement, a: mf.Assignment) -> None:
        """Apply the verified assignment ``a`` (of ``ann``, which carries its manifest)."""
        if self._retry is not None and self._retry[0].seq < a.seq:
            self._retry = None  # retried only while it is the newest assignment
        try:
            self.verifier.check_assignment(ann.assignment, ann.signature)  # order, downgrade
            if a.version == self.running_version:
                self.verifier.last_seq = a.seq
                self._write_state()
                with self._lock:
                    self._pending = None  # an older target came back: stay where we are
                self.error, self._error_is_junk = "", False
                return
            m = self.verifier.check_manifest(mf.decode(ann.manifest), a)
            got = self._fetch(a, m)
            path, t0 = got.path, time.perf_counter()
            try:
                policy = self.load_policy(path)
            except Exception as e:
                raise UpdateRejected(f"cannot load {path.name}: {e}") from None
            t1 = time.perf_counter()
            health_check(policy, self._health_obs(policy), m.version)
            stats = {"version": m.version, "via": got.via, "moved": got.moved,
                     "why_full": got.why_full, "transfer_s": got.seconds, "load_s": t1 - t0,
                     "health_s": time.perf_counter() - t1}
        except (mf.ManifestError, UpdateRejected) as e:
            self._fail(a, str(e))
            return
        except Exception as e:  # ObjectStoreError or anything unforeseen: retry, keep serving
            if not isinstance(e, ObjectStoreError):
                log.exception("unexpected error applying version %d", a.version)
            delay = self.cfg.retry_s if self._retry is None or self._retry[0].seq != a.seq \
                else min(30.0, self._retry[2] * 2)
            self._retry = (ann, time.monotonic() + delay, delay)
            self.error = f"version {a.version} download failed, retrying in {delay:.0f}s: {e}"
            self._error_is_junk = False
            log.warning("robot %s: %s", self.robot_id, self.error)
            return
        self._retry = None
        with self._lock:
            self._pending = Pending(policy, a, m, path, stats)
        log.info("robot %s: version %d verified and health-checked (seq %d, %s; %s, %d "
                 "bytes)", self.robot_id, m.version, a.seq, a.reason, got.via, got.moved)
        if self.auto_swap:
            self.take()

    # ------------------------------------------------------------------ thread
    def _receive(self, sub: zmq.Socket) -> list[wire.WeightAnnouncement]:
        """Every announcement waiting (drained); undecodable ones are counted as refused."""
        batch = []
        while True:
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return batch
            if len(frames) != 2:
                self._refuse(f"a message of {len(frames)} frames, not 2")
                continue
            try:
                batch.append(wire.decode(frames[1], expect=(wire.WeightAnnouncement,)))
            except Exception as e:  # WireError, or anything a hostile frame provokes
                self._refuse(f"undecodable: {e}")

    def _choose(self, batch: list[wire.WeightAnnouncement],
                ) -> tuple[wire.WeightAnnouncement, mf.Assignment] | None:
        """Of a drained batch, the newest genuine assignment to act on (junk with a higher
        unsigned seq never hides it), or the transient failure whose retry is due."""
        best = None
        for ann in batch:
            a = self._screen(ann)
            if a is not None and (best is None or a.seq > best[1].seq):
                best = (ann, a)
        if self._retry is not None and (best is None or best[1].seq <= self._retry[0].seq):
            retry = self._retry[0]  # verified when it first came
            if retry.seq <= self.verifier.last_seq or retry.seq in self._done_seqs:
                self._retry = None  # overtaken meanwhile
            elif time.monotonic() >= self._retry[1]:
                a = self._authentic(retry)
                return None if a is None else (retry, a)
            elif best is not None and best[1].seq == retry.seq:
                return None  # a re-send of what we are waiting to retry
        return best

    def run(self) -> None:
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.MAXMSGSIZE, wire.HARD_MAX_BYTES)
        sub.setsockopt(zmq.RECONNECT_IVL, 100)
        sub.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sub.setsockopt(zmq.SUBSCRIBE, self.robot_id.encode() + b"\0")
        sub.connect(self.cfg.publisher_address)
        try:
            while not self._halt.is_set():
                chosen = self._choose(self._receive(sub) if sub.poll(100) else [])
                if chosen is not None:
                    self._apply(*chosen)
        finally:
            sub.close(0)

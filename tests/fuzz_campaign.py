"""A fuzz campaign against a live `vlac ingest serve` process while honest robots stream.

A client with a valid enrolled CURVE key ("fuzzer") completes the handshake and then sends
hostile frames drawn by Hypothesis (``tests.wire_strategies.frames``). After each frame it
sends a probe (a chunk already stored, which ingest must ack as a duplicate), so every frame
is settled before the next: its replies are counted, and a probe that goes unanswered while
the process is gone counts as an ingest death (ingest is then restarted and the run goes
on, so one killer does not hide the rest). Meanwhile honest robots stream episodes through
the real spool and sender. Used by the suite (a few hundred frames) and by
``benchmarks/ingest_fuzz.py`` (any number).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

from tests.helpers import (
    ROBOTS,
    Keyring,
    RawClient,
    cli_process,
    free_port,
    kill,
    read_paths_agree,
    sender_config,
)
from tests.wire_strategies import frames
from vlac.edge.transport.recorder import EpisodeRecorder
from vlac.edge.transport.sender import Sender
from vlac.shared import keys, wire
from vlac.shared.episode import make_chunk, synthetic_steps

FUZZER = "robot-4"
"""Enrolled like any robot; the honest ones are ROBOTS (robot-0 .. robot-3)."""
SPEC = wire.DEFAULT_SPEC


@dataclass
class FuzzReport:
    frames: int = 0
    replies: Counter = field(default_factory=Counter)
    """Reply kind -> count: 'error:<code>', 'ack:stored', 'ack:duplicate', 'handshake:...'."""
    classes: Counter = field(default_factory=Counter)
    """Input class -> frames sent."""
    class_errors: Counter = field(default_factory=Counter)
    """Input class -> frames that got an Error reply."""
    ingest_deaths: int = 0
    killers: list[str] = field(default_factory=list)
    """The first bytes (hex) of frames after which ingest was gone."""
    honest_sent: int = 0
    honest_stored: int = 0
    alive_after: bool = False
    honest_acked_after: bool = False
    complete_episodes: int = 0
    """Complete episodes in the store afterwards, honest and fuzzed, every one of which
    reads the same through pandas and load_episode."""
    store_inconsistent: str = ""
    """Why pandas and load_episode disagree on some complete episode ('' when they agree)."""
    seconds: float = 0.0

    @property
    def error_replies(self) -> int:
        return sum(v for k, v in self.replies.items() if k.startswith("error:"))


class _Ingest:
    """`vlac ingest serve` as an OS process that can be restarted on the same port/store."""

    def __init__(self, kr, root: Path) -> None:
        self.kr, self.root, self.port = kr, root, free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = cli_process(
            "ingest", "serve", "--bind", self.address, "--store-root", str(self.root / "store"),
            "--server-secret-key", str(self.kr.server_secret), "--allowed-keys-dir",
            str(self.kr.allowed), "--status-every-s", "0", "--no-fsync",
            log=self.root / "ingest.log")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        import signal

        kill(self.proc, signal.SIGTERM)


class _Fuzzer:
    """The hostile client: one frame, then a probe, and every reply up to the probe's ack."""

    def __init__(self, kr, ingest: _Ingest, report: FuzzReport) -> None:
        self.kr, self.ingest, self.report = kr, ingest, report
        steps = synthetic_steps(SPEC, 1)
        self.probe = wire.encode(make_chunk(FUZZER, "fz-probe", 0, "probe", steps,
                                            wire.Outcome(success=True, n_chunks=1, n_steps=1)))
        self.client: RawClient | None = None
        self.connect()

    def connect(self, attempts: int = 60) -> None:
        for _ in range(attempts):
            if self.client is not None:
                self.client.close()
            self.client = RawClient(self.kr, FUZZER, self.ingest.address)
            reply = self.client.handshake()
            if isinstance(reply, wire.HandshakeReply) and reply.accepted:
                self.settle()
                return
            time.sleep(0.25)
        raise RuntimeError(f"ingest at {self.ingest.address} never accepted the fuzzer")

    def settle(self, timeout: float = 10.0) -> tuple[list[str], bool]:
        """Send the probe; collect replies until its ack. (replies, probe answered)."""
        self.client.send(self.probe)
        kinds = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.client.recv(max(0.05, deadline - time.monotonic()))
            if msg is None:
                break
            if isinstance(msg, wire.Ack) and msg.episode_id == "fz-probe":
                return kinds, True
            kinds.append(_kind(msg))
            if isinstance(msg, wire.Error) and msg.code == "handshake_required":
                return kinds, False
        return kinds, False

    def one(self, input_class: str, data: bytes) -> None:
        r = self.report
        r.frames += 1
        r.classes[input_class] += 1
        self.client.send(data)
        kinds, answered = self.settle()
        r.replies.update(kinds)
        if any(k.startswith("error:") for k in kinds):
            r.class_errors[input_class] += 1
        if not answered:
            if not self.ingest.alive():
                r.ingest_deaths += 1
                r.killers.append(f"{input_class}: {data[:48].hex()}")
                self.ingest.start()
            self.connect()


def _kind(msg: wire.Message) -> str:
    if isinstance(msg, wire.Error):
        return f"error:{msg.code}"
    if isinstance(msg, wire.Ack):
        return f"ack:{msg.status}"
    if isinstance(msg, wire.HandshakeReply):
        return f"handshake:{'accepted' if msg.accepted else 'refused'}"
    return msg.TYPE


def _honest(kr, address: str, root: Path, robot: str, stop: threading.Event,
            sent: list[str], min_episodes: int) -> Sender:
    cfg = sender_config(kr, robot, address, root / f"spool-{robot}", ack_timeout_s=1.0)
    spool = cfg.make_spool()
    sender = Sender(cfg, spool, SPEC)

    def stream() -> None:
        e = 0
        while e < min_episodes or not stop.is_set():
            rec = EpisodeRecorder(spool, robot, "open the drawer", chunk_steps=4)
            for i in range(3):
                rec.add(synthetic_steps(SPEC, 4, start_step=i * 4, seed=e))
            rec.end(True)
            sent.append(rec.episode_id)
            e += 1
            stop.wait(0.2)

    sender.start()
    sender.streamer = threading.Thread(target=stream, daemon=True)
    sender.streamer.start()
    return sender


def run(root: Path, n_frames: int, honest_robots: int = len(ROBOTS), min_episodes: int = 3,
        seed: int | None = None, progress=None) -> FuzzReport:
    """Fuzz a live ingest with ``n_frames`` hostile frames; see the module docstring."""
    from vlac.cloud.store.episodes import EpisodeStore

    root.mkdir(parents=True, exist_ok=True)
    keys.generate(root / "keys", [*ROBOTS, FUZZER])
    kr = Keyring(root / "keys", root / "outsider")
    report, t0 = FuzzReport(), time.monotonic()
    ingest = _Ingest(kr, root)
    stop, sent = threading.Event(), []
    senders = [_honest(kr, ingest.address, root, robot, stop, sent, min_episodes)
               for robot in ROBOTS[:honest_robots]]
    try:
        fuzzer = _Fuzzer(kr, ingest, report)
        strategy = frames(SPEC, FUZZER)

        @settings(max_examples=n_frames, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  derandomize=seed is not None)
        @given(frame=strategy)
        def send(frame: tuple[str, bytes]) -> None:
            fuzzer.one(*frame)
            if progress is not None:
                progress(report)

        send()
        report.alive_after = ingest.alive()
        check = RawClient(kr, "robot-0", ingest.address)
        check.handshake()
        honest = make_chunk("robot-0", "after-fuzz", 0, "push", synthetic_steps(SPEC, 2),
                            wire.Outcome(success=True, n_chunks=1, n_steps=2))
        ack = check.request(wire.encode(honest))
        report.honest_acked_after = isinstance(ack, wire.Ack) and ack.status == "stored"
        check.close()
        fuzzer.client.close()
        stop.set()
        for s in senders:
            s.streamer.join(30)
            s.wait_drained(60)
    finally:
        stop.set()
        for s in senders:
            s.stop()
        ingest.stop()
    store = EpisodeStore(root / "store", read_only=True)
    honest_ids = set(sent)
    report.honest_sent = len(sent)
    report.honest_stored = sum(e["episode_id"] in honest_ids for e in store.list_episodes())
    try:
        report.complete_episodes = read_paths_agree(root / "store")
    except AssertionError as e:
        report.store_inconsistent = f"the read paths disagree: {e!r}"
    report.seconds = time.monotonic() - t0
    return report

"""The critic as a service: rewards for a whole episode per request, over ZeroMQ + msgpack.

The learner asks ``episode_rewards(task, frames, stride)`` and gets back r_t = delta(o_t,
o_t+k) and the done probability for every step, computed in batches (image features once per
frame, all pairs of the episode in one batched pass). ``RewardServer`` serves a ROUTER socket
(one request per message, a bad request gets a RewardError naming the problem and the
server keeps serving); ``RewardClient`` is its DEALER client with a timeout;
``InProcessRewards`` offers the same call without sockets (tests, single-process runs).
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgspec
import numpy as np
import zmq

from vlac.cloud.critic.model import SmallVLACCritic
from vlac.shared.config import check, describe, opt
from vlac.shared.critic_wire import (
    ENCODER,
    REPLY_DECODER,
    REQUEST_DECODER,
    RewardError,
    RewardReply,
    RewardRequest,
)
from vlac.shared.signals import on_stop_signals
from vlac.shared.wire import Array, WireError

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024 * 1024


class RewardSource(Protocol):
    def episode_rewards(self, task: str, frames: np.ndarray, stride: int = 1,
                        reference: np.ndarray | None = None, from_first: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]: ...


class InProcessRewards:
    def __init__(self, critic: SmallVLACCritic) -> None:
        self.critic = critic

    def episode_rewards(self, task, frames, stride=1, reference=None, from_first=False):
        return self.critic.episode_rewards(task, frames, stride, reference, from_first)


@dataclass
class RewardServiceConfig:
    critic: Path = opt(Path(".cache/critic/critic.pt"), "Critic checkpoint to serve.")
    bind: str = opt("tcp://127.0.0.1:5560", "ZeroMQ address to serve on.")
    duration_s: float = opt(0.0, "Stop after this many seconds (0: until stopped).")

    def __post_init__(self) -> None:
        self.critic = Path(self.critic)
        check(self.bind.startswith(("tcp://", "ipc://", "inproc://")), "bind",
              f"{self.bind!r} is not a ZeroMQ address")


class RewardServer:
    def __init__(self, critic: SmallVLACCritic, bind: str, ctx: zmq.Context | None = None):
        self.critic = critic
        self.bind = bind
        self.ctx = ctx or zmq.Context.instance()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.address = bind
        self.served = 0
        self.errors = 0

    def stop(self) -> None:
        self._stop.set()

    def wait_ready(self, timeout: float = 30.0) -> str:
        if not self._ready.wait(timeout):
            raise TimeoutError("reward server did not start")
        return self.address

    def _answer(self, payload: bytes) -> bytes:
        try:
            req = REQUEST_DECODER.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self.errors += 1
            return ENCODER.encode(RewardError(request_id=-1, message=f"bad request: {e}"))
        try:
            if req.schema_version != 1:
                raise ValueError(f"schema version {req.schema_version} not supported (1)")
            frames = req.frames.to_numpy("frames")
            ref = req.reference.to_numpy("reference") if req.reference is not None else None
            delta, done = self.critic.episode_rewards(req.task, frames, req.stride, ref,
                                                     req.from_first)
        except (WireError, ValueError) as e:
            self.errors += 1
            return ENCODER.encode(RewardError(request_id=req.request_id, message=str(e)))
        except Exception as e:  # a critic bug answers this request; the service keeps going
            self.errors += 1
            log.exception("critic failed on request %d", req.request_id)
            return ENCODER.encode(RewardError(request_id=req.request_id,
                                              message=f"critic failed: {e!r}"))
        self.served += 1
        return ENCODER.encode(RewardReply(request_id=req.request_id,
                                       delta=Array.from_numpy(delta.astype(np.float32)),
                                       done_prob=Array.from_numpy(done.astype(np.float32))))

    def warm_up(self) -> None:
        """One request through the critic before binding: its first call loads the image
        and text encoders (seconds on a CPU), which would otherwise delay the first robot's
        progress checks past their episode."""
        try:
            self.critic.episode_rewards("warm up", np.zeros((2, 64, 64, 3), np.uint8))
        except Exception:  # a critic that fails here answers (with an error) when asked
            log.warning("critic warm-up failed; serving anyway", exc_info=True)

    def serve(self, duration_s: float = 0.0) -> None:
        import time

        self.warm_up()
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if self.bind.endswith(":0"):
            host = self.bind.rsplit(":", 1)[0]
            self.address = f"{host}:{sock.bind_to_random_port(host)}"
        else:
            sock.bind(self.bind)
        self._ready.set()
        t0 = time.monotonic()
        try:
            while not self._stop.is_set():
                if duration_s and time.monotonic() - t0 > duration_s:
                    break
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart()
                if len(frames) != 2:
                    continue
                sock.send_multipart([frames[0], self._answer(frames[1])])
        finally:
            sock.close(0)


class RewardClient:
    """The learner's side. Every call has a timeout; errors raise with the server's reason."""

    def __init__(self, address: str, timeout_s: float = 60.0,
                 ctx: zmq.Context | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.ctx = ctx or zmq.Context.instance()
        self._ids = itertools.count()
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.address)
        return s

    def close(self) -> None:
        self._sock.close(0)

    def episode_rewards(self, task, frames, stride=1, reference=None, from_first=False):
        rid = next(self._ids)
        req = RewardRequest(request_id=rid, task=task, frames=Array.from_numpy(frames),
                            stride=stride, from_first=from_first,
                            reference=Array.from_numpy(reference) if reference is not None
                            else None)
        self._sock.send(ENCODER.encode(req))
        while True:
            if not self._sock.poll(int(self.timeout_s * 1000)):
                self._sock.close(0)  # drop whatever might still come for the lost request
                self._sock = self._connect()
                raise TimeoutError(f"no answer from the reward service at {self.address} "
                                   f"within {self.timeout_s}s; is `vlac critic serve` running?")
            rep = REPLY_DECODER.decode(self._sock.recv())
            if rep.request_id != rid:
                continue  # a late answer to an earlier request, or to garbage we never sent
            if isinstance(rep, RewardError):
                raise ValueError(f"reward service refused the request: {rep.message}")
            return rep.delta.to_numpy().copy(), rep.done_prob.to_numpy().copy()


def main(cfg: RewardServiceConfig) -> None:
    print(describe(cfg), flush=True)
    server = RewardServer(SmallVLACCritic.load(cfg.critic), cfg.bind)
    on_stop_signals(server.stop)
    server.serve(cfg.duration_s)
    print(f"reward service stopped after {server.served} requests ({server.errors} refused)")

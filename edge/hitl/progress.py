"""The critic's view of a running episode, on the robot, without ever blocking the robot.

``CriticProgress`` is the progress function a ``StallWatch`` operator calls: it sends the
episode's first frame and the current one to the critic service (``vlac critic serve``, the
same typed msgpack request the learner uses) and returns the answer when it has come back, or
None while a request is in flight. The robot's loop never waits on the network: a slow or
absent critic service only means stall checks are skipped.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import zmq

from vlac.edge.robots.robot import Observation
from vlac.shared.critic_wire import ENCODER, REPLY_DECODER, RewardError, RewardRequest
from vlac.shared.wire import Array

log = logging.getLogger(__name__)


class CriticProgress:
    def __init__(self, address: str, camera: str = "corner", timeout_s: float = 10.0,
                 ctx: zmq.Context | None = None) -> None:
        self.address, self.camera, self.timeout_s = address, camera, timeout_s
        self.ctx = ctx or zmq.Context.instance()
        self._ids = itertools.count()
        self._sock: zmq.Socket | None = None
        self._inflight: tuple[int, float] | None = None
        self.answered = self.errors = 0

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            self._sock = self.ctx.socket(zmq.DEALER)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.setsockopt(zmq.SNDHWM, 4)
            self._sock.connect(self.address)
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __call__(self, first: Observation, now: Observation) -> float | None:
        import time

        sock = self._socket()
        answer = None
        while sock.poll(0):
            rep = REPLY_DECODER.decode(sock.recv())
            if self._inflight is None or rep.request_id != self._inflight[0]:
                continue
            self._inflight = None
            if isinstance(rep, RewardError):
                self.errors += 1
                log.warning("critic service refused a progress request: %s", rep.message)
            else:
                self.answered += 1
                answer = float(rep.delta.to_numpy()[0])
        if self._inflight is not None and time.monotonic() - self._inflight[1] > self.timeout_s:
            log.warning("no progress answer from %s in %.0fs; reconnecting", self.address,
                        self.timeout_s)
            self.close()
            self._inflight = None
            sock = self._socket()
        if self._inflight is None:
            rid = next(self._ids)
            frames = np.stack([first.images[self.camera], now.images[self.camera]])
            try:
                sock.send(ENCODER.encode(RewardRequest(request_id=rid, task=now.task,
                                                       frames=Array.from_numpy(frames))),
                          zmq.NOBLOCK)
                self._inflight = (rid, time.monotonic())
            except zmq.Again:
                pass
        return answer

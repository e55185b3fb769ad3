"""Cuts an episode into chunks and writes each durably to the spool."""

from __future__ import annotations

import uuid

from vlac.edge.transport.spool import Spool
from vlac.shared import wire
from vlac.shared.episode import StepColumns, concat_steps, make_chunk, split_steps

DEFAULT_CHUNK_STEPS = 64
"""Steps per chunk. Every chunk costs both sides a file, two fsyncs and a round trip whatever
its size, so bigger chunks move more steps per second (benchmarks/transport.py, 8 robots,
zstd: 16 steps 3.9k steps/s, 32 5.4k, 64 6.1k); a chunk is also the compression block, so
64 frames compress 15% better than 16. Nothing is lost by waiting: an episode only counts
once its last chunk is stored."""


def new_episode_id(robot_id: str) -> str:
    return f"{robot_id[:24]}-{uuid.uuid4().hex[:16]}"


class EpisodeRecorder:
    """Buffer steps of one episode; every ``chunk_steps`` steps becomes a spooled chunk.

    ``end(success, reason)`` writes the last chunk with the outcome. Nothing here touches the
    network: the sender thread picks chunks up from the spool.
    """

    def __init__(self, spool: Spool, robot_id: str, task: str,
                 chunk_steps: int = DEFAULT_CHUNK_STEPS,
                 episode_id: str | None = None, source: str = "policy",
                 task_id: str = "", image_codec: str = wire.DEFAULT_IMAGE_CODEC) -> None:
        if chunk_steps < 1:
            raise ValueError("chunk_steps must be at least 1")
        if image_codec not in wire.IMAGE_CODECS:
            raise ValueError(f"image_codec {image_codec!r} is not one of "
                             f"{list(wire.IMAGE_CODECS)}")
        self.image_codec = image_codec
        self.spool = spool
        self.robot_id = robot_id
        self.task = task
        self.chunk_steps = chunk_steps
        self.episode_id = episode_id or new_episode_id(robot_id)
        self.source = source
        self.task_id = task_id
        self._buf: list[StepColumns] = []
        self._buffered = 0
        self._seq = 0
        self._steps = 0
        self.closed = False

    @property
    def n_steps(self) -> int:
        return self._steps + self._buffered

    def add(self, steps: StepColumns) -> None:
        if self.closed:
            raise RuntimeError(f"episode {self.episode_id} has ended; start a new recorder")
        self._buf.append(steps)
        self._buffered += len(steps)
        while self._buffered > self.chunk_steps:  # keep >= 1 step for the final chunk
            self._flush(self.chunk_steps, None)

    def end(self, success: bool, reason: str = "") -> int:
        """Write the final chunk (carrying the outcome). Returns the number of chunks."""
        if self.closed:
            raise RuntimeError(f"episode {self.episode_id} has already ended")
        if self._buffered == 0:
            raise ValueError("an episode needs at least one step before it can end")
        n_chunks = self._seq + 1
        outcome = wire.Outcome(success=success, n_chunks=n_chunks, n_steps=self.n_steps,
                               reason=reason or ("success" if success else "failure"))
        self._flush(self._buffered, outcome)
        self.closed = True
        return n_chunks

    def _flush(self, n: int, final: wire.Outcome | None) -> None:
        cols = concat_steps(self._buf)
        head, rest = split_steps(cols, n)
        self._buf = [rest] if rest is not None else []
        self._buffered -= n
        chunk = make_chunk(self.robot_id, self.episode_id, self._seq, self.task, head, final,
                           first_step=self._steps, source=self.source, task_id=self.task_id,
                           image_codec=self.image_codec)
        self.spool.put(self.episode_id, self._seq, wire.encode(chunk))
        self._seq += 1
        self._steps += n

"""What the episode store knows of an episode still arriving, and the rules a new chunk must
keep so that the episode, once complete, reads the same through every path.

A chunk is refused (``WireError`` code ``contradicts``, or ``task_changed``) when it
contradicts what was already accepted for its episode: a second final chunk, a seq at or
beyond the final chunk's ``n_chunks``, steps that overlap another chunk's or come out of seq
order, steps beyond the final chunk's ``n_steps``, or a last missing chunk that would leave a
gap. Then ``pd.read_parquet(ROOT / "episodes")`` (every chunk file of every complete episode)
and ``EpisodeStore.load_episode`` (chunks ``0 .. n_chunks - 1``) hold the same rows, and each
(robot, episode, step) appears once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vlac.shared.wire import WireError


@dataclass
class Staged:
    """An episode in ``staging/``: its chunks' step ranges and, once seen, its outcome."""

    task: str
    source: str = "policy"
    task_id: str = ""
    chunks: dict[int, tuple[int, int]] = field(default_factory=dict)
    """seq -> (first_step, number of steps)."""
    final: dict[str, Any] | None = None
    """The final chunk's outcome (success, n_chunks, n_steps, reason)."""
    updated_at: float = field(default_factory=time.time)
    """When a chunk of it was last stored (unix seconds): its age for garbage collection."""

    def copy(self) -> Staged:
        return Staged(self.task, self.source, self.task_id, dict(self.chunks),
                      self.final, self.updated_at)

    def add(self, seq: int, first_step: int, n: int, final: dict[str, Any] | None) -> None:
        self.chunks[seq] = (first_step, n)
        if final is not None:
            self.final = final
        self.updated_at = time.time()

    def merge(self, other: Staged) -> None:
        """Add what another writer (an ingest shard) stored of the same episode."""
        self.chunks.update(other.chunks)
        self.final = self.final or other.final
        self.updated_at = max(self.updated_at, other.updated_at)

    def manifest(self, robot_id: str, episode_id: str) -> dict[str, Any]:
        """The ``_episode.json`` of the complete episode (both stores write the same)."""
        assert self.final is not None, "only a complete episode has a manifest"
        info = {"robot_id": robot_id, "episode_id": episode_id, "task": self.task,
                "task_id": self.task_id, "source": self.source,
                "n_chunks": self.final["n_chunks"], "n_steps": self.n_steps,
                "outcome": self.final, "completed_at": time.time()}
        if self.n_steps != self.final["n_steps"]:  # only stores written before the chunk rules
            info["warning"] = (f"final chunk says {self.final['n_steps']} steps, chunks hold "
                               f"{self.n_steps}")
        return info

    @property
    def n_steps(self) -> int:
        return sum(n for _, n in self.chunks.values())

    def complete(self) -> bool:
        return self.final is not None and all(
            s in self.chunks for s in range(self.final["n_chunks"]))

    def refusal(self, seq: int, first_step: int, n: int, task: str,
                final: dict[str, Any] | None) -> WireError | None:
        """Why a chunk contradicts this episode (None when it fits)."""
        if task != self.task:
            return WireError("task_changed", f"the episode began with task {self.task!r}, "
                             f"this chunk says {task!r}", "task")
        end = first_step + n
        outcome = final or self.final
        if final is not None and final["n_chunks"] != seq + 1:
            return _contradicts(f"a final chunk at seq {seq} must say {seq + 1} chunks, not "
                                f"{final['n_chunks']}", "final.n_chunks")
        if final is not None and self.final is not None:
            return _contradicts(f"the episode already has its final chunk (seq "
                                f"{self.final['n_chunks'] - 1}: {self.final['n_chunks']} "
                                f"chunks, {self.final['n_steps']} steps); seq {seq} is a "
                                "second final chunk", "final")
        if outcome is not None:
            last = max([seq, *self.chunks])
            if last >= outcome["n_chunks"]:
                return _contradicts(f"the final chunk says {outcome['n_chunks']} chunks but "
                                    f"seq {last} is {'this one' if last == seq else 'stored'}",
                                    "seq" if last == seq else "final.n_chunks")
            stop = max([end, *(f + m for f, m in self.chunks.values())])
            if stop > outcome["n_steps"]:
                return _contradicts(f"the final chunk says {outcome['n_steps']} steps but "
                                    f"steps up to {stop} are in the episode", "first_step")
        return self._order_refusal(seq, first_step, end) or self._gap_refusal(
            seq, first_step, n, outcome)

    def _order_refusal(self, seq: int, first_step: int, end: int) -> WireError | None:
        if seq == 0 and first_step != 0:
            return _contradicts(f"chunk 0 must start at step 0, not {first_step}", "first_step")
        for s, (f, m) in self.chunks.items():
            if (s < seq and f + m > first_step) or (s > seq and f < end):
                return _contradicts(f"its steps [{first_step}, {end}) overlap or come out of "
                                    f"order with chunk {s}'s steps [{f}, {f + m})",
                                    "first_step")
        return None

    def _gap_refusal(self, seq: int, first_step: int, n: int,
                     outcome: dict[str, Any] | None) -> WireError | None:
        """The chunk that completes the episode must leave no gap between steps."""
        if outcome is None:
            return None
        ranges = {**self.chunks, seq: (first_step, n)}
        if any(s not in ranges for s in range(outcome["n_chunks"])):
            return None
        at = 0
        for s in range(outcome["n_chunks"]):
            f, m = ranges[s]
            if f != at:
                return _contradicts(f"it would complete the episode with chunk {s} starting "
                                    f"at step {f} where the chunks before it end at {at}",
                                    "first_step")
            at = f + m
        if at != outcome["n_steps"]:
            return _contradicts(f"its chunks hold {at} steps but the final chunk says "
                                f"{outcome['n_steps']}", "final.n_steps")
        return None


def staged_from_chunks(chunks: Iterable[tuple[dict[str, Any], float]]) -> Staged | None:
    """An episode's staging state rebuilt from its stored chunks' metadata (the ``vlac``
    schema metadata of each file, with the time it was stored); None if there are none."""
    st = None
    for meta, stored_at in chunks:
        st = st or Staged(task=meta["task"], source=meta.get("source", "policy"),
                          task_id=meta.get("task_id", ""), updated_at=0.0)
        st.chunks[meta["seq"]] = (meta["first_step"], meta["n_steps"])
        st.final = meta.get("final") or st.final
        st.updated_at = max(st.updated_at, stored_at)
    return st


def _contradicts(message: str, field_name: str) -> WireError:
    return WireError("contradicts", message + "; nothing was stored. The robot's recorder "
                     "is inconsistent: fix or drop this episode's spool", field_name)

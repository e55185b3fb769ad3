"""What every episode store does whatever holds its bytes (a folder, an S3 bucket).

``IndexedStore`` keeps the in-memory index (complete episodes, episodes still arriving),
plans each chunk against it (new, duplicate, or contradicting its episode: the rules of
``staging``), and turns complete episodes into ``Episode`` objects. A backend supplies five
things: store new chunks so that a chunk already there is never stored twice (``_store_new``),
say what the storage holds of one episode now (``_lookup``), complete an episode
(``_finish``), drop an episode's staging leftovers (``_drop_staging``) and read a complete
episode's table (``_episode_table``).

Several writers (ingest shards) may share one store. The index is then a cache of what this
writer has seen, never the authority: the storage decides duplicates (the chunk is created
only if absent), an episode this writer has not seen yet is looked up in the storage before
its first chunk is planned, and an episode whose final chunk is known but whose other chunks
are not all in the index is looked up again before it is given up as incomplete, so whichever
writer stores the last missing chunk completes it. Completing twice is harmless (same chunks,
the first manifest stays). After each batch, an episode still arriving in this writer's index
is checked for a manifest (a stat, or one HEAD on S3): if another writer completed it, what
this one just stored is a leftover in staging, removed and answered "duplicate".
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from vlac.cloud.store.parquet import arrow_to_numpy, table_to_steps
from vlac.cloud.store.staging import Staged
from vlac.shared.episode import StepColumns, slice_steps
from vlac.shared.objstore import ObjectStoreError
from vlac.shared.wire import Outcome, WireError, check_id

Key = tuple[str, str]  # (robot_id, episode_id)

log = logging.getLogger(__name__)


class StoreBusy(RuntimeError):
    """Another process holds the store in a way that forbids what was asked."""


class StoreUnavailable(ObjectStoreError, OSError):
    """The storage behind the store cannot be reached or refused an operation. An OSError,
    so ingest answers it as it answers a full disk: nothing acknowledged, the robot retries."""


@dataclass
class Episode:
    """A complete episode assembled from its chunks, as numpy arrays."""

    robot_id: str
    episode_id: str
    task: str
    outcome: Outcome
    steps: StepColumns
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class ChunkWrite:
    """One chunk to store (what ingest hands the store after validation)."""

    robot_id: str
    episode_id: str
    seq: int
    task: str
    steps: StepColumns
    final: Outcome | None = None
    first_step: int = 0
    source: str = "policy"
    task_id: str = ""

    def meta(self) -> dict[str, Any]:
        final = None
        if self.final is not None:
            final = {"success": self.final.success, "n_chunks": self.final.n_chunks,
                     "n_steps": self.final.n_steps, "reason": self.final.reason}
        return {"robot_id": self.robot_id, "episode_id": self.episode_id, "seq": self.seq,
                "task": self.task, "n_steps": len(self.steps), "first_step": self.first_step,
                "final": final, "source": self.source, "task_id": self.task_id}


def chunk_name(seq: int) -> str:
    return f"chunk-{seq:07d}.parquet"


class IndexedStore:
    """The index and the rules both stores share; see the module docstring. Thread-safe."""

    root: Any  # a Path or an s3:// URI: how messages name the store

    def __init__(self, *, read_only: bool) -> None:
        self.read_only = read_only
        self._lock = threading.RLock()
        self._complete: set[Key] = set()
        self._staged: dict[Key, Staged] = {}
        self._absent: set[Key] = set()  # looked up in the storage, nothing there yet

    # ------------------------------------------------------------------ backend
    def _store_new(self, chunks: list[ChunkWrite]) -> list[bool]:
        """Durably store chunks planned as new; per chunk False where the storage already
        held it (another writer stored it). Raise (nothing indexed) if one fails."""
        raise NotImplementedError

    def _lookup(self, key: Key) -> Staged | bool | None:
        """What the storage holds of an episode now: True if complete, its Staged while it
        arrives, None if nothing."""
        raise NotImplementedError

    def _finish(self, key: Key, st: Staged) -> bool:
        """Make a complete episode visible to readers, atomically. False (and staging
        emptied of its leftovers) where another writer had already made it so."""
        raise NotImplementedError

    def _drop_staging(self, key: Key) -> None:
        """Remove whatever staging holds of an episode."""
        raise NotImplementedError

    def _episode_table(self, robot_id: str, episode_id: str,
                       columns: list[str] | None = None) -> tuple[dict[str, Any], pa.Table]:
        """A complete episode's manifest and its chunks concatenated in order."""
        raise NotImplementedError

    def is_complete(self, robot_id: str, episode_id: str) -> bool:
        """Whether the store holds this episode complete (its manifest exists)."""
        raise NotImplementedError

    def list_episodes(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def incomplete(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    # ------------------------------------------------------------------ index
    def _writable(self) -> None:
        if self.read_only:
            raise PermissionError(f"the store at {self.root} was opened read-only")

    def _known(self, key: Key) -> None:
        """Make sure the index has looked at what the storage holds of ``key``: another
        writer (an ingest shard the robot used before) may have stored part of it."""
        if self.read_only or key in self._complete or key in self._staged \
                or key in self._absent:
            return
        found = self._lookup(key)
        if found is True:
            self._complete.add(key)
        elif isinstance(found, Staged):
            self._staged[key] = found
        else:
            self._absent.add(key)

    def has(self, robot_id: str, episode_id: str, seq: int) -> bool:
        with self._lock:
            self._known((robot_id, episode_id))
            if (robot_id, episode_id) in self._complete:
                return True
            st = self._staged.get((robot_id, episode_id))
            return st is not None and seq in st.chunks

    def _plan(self, c: ChunkWrite, planned: dict[Key, Staged]) -> bool | WireError:
        """Whether ``c`` is new (True), a duplicate (False) or contradicts its episode as the
        store and the batch so far hold it; a new chunk is added to ``planned``."""
        check_id(c.robot_id, "robot_id")
        check_id(c.episode_id, "episode_id")
        key = (c.robot_id, c.episode_id)
        with self._lock:
            self._known(key)
            if key in self._complete:
                return False
            if key not in planned:
                st = self._staged.get(key)
                planned[key] = st.copy() if st else Staged(c.task, c.source, c.task_id)
        st = planned[key]
        if c.seq in st.chunks:
            return False
        final = c.meta()["final"]
        refusal = st.refusal(c.seq, c.first_step, len(c.steps), c.task, final)
        if refusal is not None:
            return refusal
        st.add(c.seq, c.first_step, len(c.steps), final)
        return True

    def _maybe_complete(self, key: Key) -> str:
        """Complete ``key`` if all its chunks are stored (by this writer or another):
        "completed" where this call did, "elsewhere" where another writer already had
        (this writer's index was behind: what it just stored are duplicates), "" if the
        episode is still arriving."""
        st = self._staged.get(key)
        if st is None or st.final is None:
            return ""
        done = "completed"
        if not st.complete():
            found = self._lookup(key)  # another shard may hold the chunks we lack
            if found is True:  # ... or have completed it meanwhile
                self._drop_staging(key)
                done = "elsewhere"
            elif isinstance(found, Staged):
                st.merge(found)
            if done != "elsewhere" and not st.complete():
                return ""
        if done == "completed" and not self._finish(key, st):
            done = "elsewhere"
        self._complete.add(key)
        del self._staged[key]
        return done

    # ------------------------------------------------------------------ writes
    def write_chunk(self, robot_id: str, episode_id: str, seq: int, task: str,
                    steps: StepColumns, final: Outcome | None = None,
                    first_step: int = 0) -> bool:
        """Durably store one chunk. Returns False (and writes nothing) for a duplicate;
        raises WireError for a chunk that contradicts its episode."""
        [written] = self.write_chunks([ChunkWrite(robot_id, episode_id, seq, task, steps,
                                                  final, first_step)])
        if isinstance(written, WireError):
            raise written
        return written

    def write_chunks(self, chunks: list[ChunkWrite]) -> list[bool | WireError]:
        """Durably store a batch of chunks (group commit). Per chunk: True where stored,
        False for a duplicate, a WireError (nothing written) where it contradicts what its
        episode already holds (``vlac.cloud.store.staging``). If storing raises, nothing of
        the batch is indexed or acknowledged: the robot resends it, and what did reach the
        storage is then found there and answered as a duplicate."""
        self._writable()
        result: list[bool | WireError] = []
        todo: list[tuple[int, ChunkWrite]] = []
        planned: dict[Key, Staged] = {}  # the batch's episodes as they will be
        for c in chunks:
            verdict = self._plan(c, planned)
            if verdict is True:
                todo.append((len(result), c))
            result.append(verdict)
        stored = self._store_new([c for _, c in todo]) if todo else []
        for (i, _), new in zip(todo, stored, strict=True):
            result[i] = new
        with self._lock:
            for key in {(c.robot_id, c.episode_id) for _, c in todo}:
                self._staged[key] = planned[key]
                self._absent.discard(key)
                done = self._maybe_complete(key)
                if not done and self.is_complete(*key):
                    # this writer's index was behind another writer that completed the
                    # episode: what it just stored landed in staging, as leftovers
                    self._drop_staging(key)
                    self._complete.add(key)
                    del self._staged[key]
                    done = "elsewhere"
                if done == "elsewhere":
                    for i, c in todo:
                        if (c.robot_id, c.episode_id) == key:
                            result[i] = False
        return result

    def write_episode(self, robot_id: str, episode_id: str, task: str, steps: StepColumns,
                      success: bool, reason: str = "", chunk_steps: int = 64,
                      source: str = "policy", task_id: str = "") -> int:
        """Store a whole episode at once (demonstrations, imports). Returns its chunk count."""
        n = len(steps)
        if n == 0:
            raise ValueError("an episode needs at least one step")
        starts = list(range(0, n, chunk_steps))
        outcome = Outcome(success=success, n_chunks=len(starts), n_steps=n,
                          reason=reason or ("success" if success else "failure"))
        writes = [ChunkWrite(robot_id, episode_id, i, task, slice_steps(steps, s, s + chunk_steps),
                             outcome if i == len(starts) - 1 else None, s, source, task_id)
                  for i, s in enumerate(starts)]
        self.write_chunks(writes)
        return len(starts)

    def collect_staging(self, older_than_s: float) -> list[dict[str, Any]]:
        """Remove episodes that stayed incomplete for ``older_than_s`` seconds since their
        last chunk (a robot that crashed mid-episode never sends the rest); returns what
        was dropped, each logged. Complete episodes are never touched. Each candidate is
        looked up first: another writer may have added to it since, or completed it."""
        self._writable()
        dropped = []
        with self._lock:
            for inc in self.incomplete():
                key = (inc["robot_id"], inc["episode_id"])
                if inc["age_s"] < older_than_s or key in self._complete:
                    continue
                found = self._lookup(key)
                if found is True:  # completed elsewhere: ours are leftovers
                    self._drop_staging(key)
                    self._complete.add(key)
                    self._staged.pop(key, None)
                    continue
                if isinstance(found, Staged) and (
                        found.complete() or time.time() - found.updated_at < older_than_s):
                    self._staged[key].merge(found)  # still arriving, or only to be finished
                    self._maybe_complete(key)
                    continue
                self._drop_staging(key)
                del self._staged[key]
                log.warning("dropped incomplete episode %s/%s from staging in %s: %d chunks "
                            "(%s), %.0f KB, no chunk for %.0f s", *key, self.root,
                            len(inc["chunks"]), "final seen" if inc["final_seen"] else
                            "no final", inc["bytes"] / 1e3, inc["age_s"])
                dropped.append(inc)
        return dropped

    # ------------------------------------------------------------------ reads
    def load_episode(self, robot_id: str, episode_id: str) -> Episode:
        info, table = self._episode_table(robot_id, episode_id)
        return Episode(robot_id, episode_id, info["task"], Outcome(**info["outcome"]),
                       table_to_steps(table), info)

    def load_columns(self, robot_id: str, episode_id: str,
                     columns: list[str]) -> dict[str, np.ndarray]:
        """Some step columns of a complete episode (no image decoding), as numpy arrays."""
        _, table = self._episode_table(robot_id, episode_id, columns)
        return {c: arrow_to_numpy(table.column(c)) for c in columns}

    def stats(self) -> dict[str, Any]:
        eps = self.list_episodes()
        return {
            "episodes": len(eps),
            "steps": sum(e["n_steps"] for e in eps),
            "robots": len({e["robot_id"] for e in eps}),
            "bytes": sum(e["bytes"] for e in eps),
            "incomplete": len(self.incomplete()),  # a read-only store scans staging
        }

    def _missing(self, robot_id: str, episode_id: str) -> KeyError:
        return KeyError(f"no complete episode {robot_id}/{episode_id} in {self.root}; "
                        "`vlac store ls` lists them")

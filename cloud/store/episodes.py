"""The episode store: chunks written durably as Parquet, assembled into episodes.

On-disk format (open it with pyarrow or pandas, no vlac code needed)::

    ROOT/staging/<robot_id>/<episode_id>/chunk-0000000.parquet   episodes still arriving
    ROOT/episodes/robot_id=<robot_id>/episode_id=<episode_id>/
        chunk-0000000.parquet ...                                 one file per chunk, in order
        _episode.json                                             task, outcome, step count ...

``pd.read_parquet(ROOT / "episodes")`` reads every complete episode as one table, with
``robot_id`` and ``episode_id`` columns from the (Hive-style) folder names; files starting
with ``_`` or ``.`` are ignored by pyarrow. Each row is one step:

    step              int64     index of the step within its episode
    timestamp         float64   unix seconds of the observation
    proprio           fixed_size_list<float32>[proprio_dim]
    action            fixed_size_list<float32>[action_dim]
    action_tokens     fixed_size_list<int32>[action_dim]
    logprob           float32   behaviour log-probability (0 for operator steps)
    policy_version    int64
    intervention      bool      an operator acted instead of the policy
    image.<camera>    binary    H*W*C uint8 pixels, row-major (zstd-compressed by Parquet);
                                the field's metadata holds ``shape`` as JSON, e.g. [128,128,3]

Each file's schema metadata holds ``vlac`` = JSON {robot_id, episode_id, seq, task, final}.

Durability: a chunk file is written under a temporary name, fsynced, renamed and its folder
fsynced before ``write_chunk`` returns; ingest acknowledges only then. An episode is complete
when its final chunk (which says how many chunks there are) and every earlier chunk are
stored; ``_episode.json`` is then written and the folder is moved from ``staging/`` to
``episodes/`` with one atomic rename. A chunk whose key (robot_id, episode_id, seq) is already
stored, in staging or in a complete episode, is a duplicate and is not written again. After a
crash, ``EpisodeStore(root)`` rebuilds its index from the folders and finishes any episode that
was complete but not yet moved.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlac.cloud.store.parquet import META_KEY, arrow_to_numpy, steps_to_table, table_to_steps
from vlac.cloud.store.staging import Staged
from vlac.shared.episode import StepColumns, slice_steps
from vlac.shared.fsutil import fsync_path
from vlac.shared.wire import Outcome, WireError, check_id

log = logging.getLogger(__name__)


class StoreBusy(RuntimeError):
    """Another process holds the store in a way that forbids what was asked."""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # moved to episodes/ meanwhile
        return 0


def _staged_from_files(edir: Path) -> Staged | None:
    """An episode's staging state rebuilt from its chunk files (None if it has none)."""
    st = None
    for f in sorted(edir.glob("chunk-*.parquet")):
        try:
            meta = json.loads(pq.read_schema(f).metadata[META_KEY])
            first = meta.get("first_step")
            if first is None:  # written before chunks recorded it in their metadata
                first = int(pq.read_table(f, columns=["step"]).column("step")[0].as_py())
            mtime = f.stat().st_mtime
        except FileNotFoundError:  # moved to episodes/ by a writer meanwhile
            continue
        st = st or Staged(task=meta["task"], source=meta.get("source", "policy"),
                          task_id=meta.get("task_id", ""), updated_at=0.0)
        st.chunks[meta["seq"]] = (first, meta["n_steps"])
        st.final = meta.get("final") or st.final
        st.updated_at = max(st.updated_at, mtime)
    return st


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


class EpisodeStore:
    """Exactly-once, durable store of episode chunks. Thread-safe.

    ``read_only=True`` is a reader beside a running ingest (the learner): it never touches
    ``staging/`` (no crash recovery, which would race the writer) and refuses writes."""

    def __init__(self, root: str | Path, *, fsync: bool = True,
                 compression: str = "zstd", read_only: bool = False) -> None:
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.episodes = self.root / "episodes"
        self.read_only = read_only
        self.fsync = fsync
        self.compression = compression
        self._lock = threading.RLock()
        self._complete: set[tuple[str, str]] = set()
        self._staged: dict[tuple[str, str], Staged] = {}
        self._executor: ThreadPoolExecutor | None = None
        if read_only:
            return
        self.staging.mkdir(parents=True, exist_ok=True)
        self.episodes.mkdir(parents=True, exist_ok=True)
        self._recover()

    # ------------------------------------------------------------------ paths
    def _staging_dir(self, robot_id: str, episode_id: str) -> Path:
        return self.staging / robot_id / episode_id

    def episode_dir(self, robot_id: str, episode_id: str) -> Path:
        return self.episodes / f"robot_id={robot_id}" / f"episode_id={episode_id}"

    # ------------------------------------------------------------------ recovery
    def _recover(self) -> None:
        for rdir in self.episodes.glob("robot_id=*"):
            for edir in rdir.glob("episode_id=*"):
                if (edir / "_episode.json").exists():
                    self._complete.add((rdir.name[9:], edir.name[11:]))
        for rdir in self.staging.iterdir():
            for edir in rdir.iterdir() if rdir.is_dir() else []:
                key = (rdir.name, edir.name)
                for tmp in edir.glob(".tmp-*"):
                    tmp.unlink()  # never acknowledged: the robot still has it
                if key in self._complete:  # crashed after the move's copy: drop leftovers
                    shutil.rmtree(edir)
                    continue
                st = _staged_from_files(edir)
                if st is not None:
                    self._staged[key] = st
                    self._maybe_complete(*key)

    # ------------------------------------------------------------------ queries
    def has(self, robot_id: str, episode_id: str, seq: int) -> bool:
        with self._lock:
            if (robot_id, episode_id) in self._complete:
                return True
            st = self._staged.get((robot_id, episode_id))
            return st is not None and seq in st.chunks

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
        episode already holds (``vlac.cloud.store.staging``). All files are written, then fsynced
        together, then renamed into place and each folder fsynced once, so a batch costs
        little more than one chunk. If writing raises, nothing of the batch is indexed or
        acknowledged (a robot resends it) and no temporary file is left behind."""
        if self.read_only:
            raise PermissionError(f"the store at {self.root} was opened read-only")
        todo: list[tuple[ChunkWrite, Path, Path]] = []
        result: list[bool | WireError] = []
        planned: dict[tuple[str, str], Staged] = {}  # the batch's episodes as they will be
        try:
            for c in chunks:
                verdict = self._plan(c, planned)
                result.append(verdict)
                if verdict is True:
                    todo.append((c, *self._write_tmp(c)))
        except BaseException:
            for _, tmp, _ in todo:
                tmp.unlink(missing_ok=True)
            raise
        if self.fsync and todo:
            # fsync releases the GIL: concurrent fsyncs share the file system's journal
            # commits, which is where batching pays.
            list(self._pool().map(fsync_path, [tmp for _, tmp, _ in todo]))
        for _, tmp, dest in todo:
            os.replace(tmp, dest)
        if self.fsync:
            for d in {dest.parent for _, _, dest in todo}:
                fsync_path(d)
        with self._lock:
            for key in {(c.robot_id, c.episode_id) for c, _, _ in todo}:
                self._staged[key] = planned[key]
                self._maybe_complete(*key)
        return result

    def _plan(self, c: ChunkWrite, planned: dict[tuple[str, str], Staged]) -> bool | WireError:
        """Whether ``c`` is new (True), a duplicate (False) or contradicts its episode as the
        store and the batch so far hold it; a new chunk is added to ``planned``."""
        check_id(c.robot_id, "robot_id")
        check_id(c.episode_id, "episode_id")
        key = (c.robot_id, c.episode_id)
        with self._lock:
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

    def _write_tmp(self, c: ChunkWrite) -> tuple[Path, Path]:
        """Write a chunk's file under a temporary name; returns (temporary, final) paths."""
        edir = self._staging_dir(c.robot_id, c.episode_id)
        edir.mkdir(parents=True, exist_ok=True)
        name = f"chunk-{c.seq:07d}.parquet"
        tmp = edir / f".tmp-{name}"
        try:
            with open(tmp, "wb") as f:
                pq.write_table(steps_to_table(c.steps, c.first_step, c.meta()), f,
                               compression=self.compression, use_dictionary=False,
                               write_statistics=False)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, edir / name

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

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(4, thread_name_prefix="store-fsync")
        return self._executor

    def _maybe_complete(self, robot_id: str, episode_id: str) -> bool:
        key = (robot_id, episode_id)
        st = self._staged.get(key)
        if st is None or not st.complete():
            return False
        src = self._staging_dir(robot_id, episode_id)
        info = {"robot_id": robot_id, "episode_id": episode_id, "task": st.task,
                "task_id": st.task_id, "source": st.source, "n_chunks": st.final["n_chunks"],
                "n_steps": st.n_steps, "outcome": st.final,
                "completed_at": time.time()}
        if st.n_steps != st.final["n_steps"]:  # only stores written before the chunk rules
            info["warning"] = (f"final chunk says {st.final['n_steps']} steps, chunks hold "
                               f"{st.n_steps}")
        tmp = src / ".tmp-_episode.json"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=1)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, src / "_episode.json")
        dest = self.episode_dir(robot_id, episode_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dest)  # atomic: the episode appears whole or not at all
        if self.fsync:
            fsync_path(dest.parent)
            fsync_path(src.parent)
        self._complete.add(key)
        del self._staged[key]
        return True

    # ------------------------------------------------------------------ reads
    def list_episodes(self) -> list[dict[str, Any]]:
        """Summaries (the ``_episode.json`` contents) of all complete episodes."""
        out = []
        for meta in sorted(self.episodes.glob("robot_id=*/episode_id=*/_episode.json")):
            info = json.loads(meta.read_text())
            info["bytes"] = sum(p.stat().st_size for p in meta.parent.glob("chunk-*.parquet"))
            out.append(info)
        out.sort(key=lambda i: (i["robot_id"], i["completed_at"]))
        return out

    def incomplete(self) -> list[dict[str, Any]]:
        """Episodes still in staging: chunks held, whether the final one came, age (seconds
        since a chunk of it was last stored) and bytes on disk. A read-only store reads
        them from the folders (a writer's index may be ahead by a batch)."""
        if self.read_only:
            staged = {}
            for edir in sorted(self.staging.glob("*/*")) if self.staging.is_dir() else []:
                st = _staged_from_files(edir)
                if st is not None:
                    staged[(edir.parent.name, edir.name)] = st
        else:
            with self._lock:
                staged = {k: st.copy() for k, st in self._staged.items()}
        now = time.time()
        out = []
        for (r, e), st in sorted(staged.items()):
            files = list(self._staging_dir(r, e).glob("chunk-*.parquet"))
            out.append({"robot_id": r, "episode_id": e, "task": st.task,
                        "chunks": sorted(st.chunks), "final_seen": st.final is not None,
                        "age_s": max(0.0, now - st.updated_at),
                        "bytes": sum(_size(f) for f in files)})
        return out

    @contextlib.contextmanager
    def writer_lock(self, *, exclusive: bool) -> Iterator[None]:
        """Held shared by every live writer (ingest) and exclusively by `vlac store gc`, so
        a collection by hand never pulls staging from under a running ingest (whose index
        would then ack chunks as stored that are gone). The kernel frees it when the holder
        dies, so a SIGKILLed ingest leaves nothing to clean up."""
        with open(self.root / ".writers.lock", "a+") as f:
            try:
                fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusy(f"a running ingest writes to {self.root}. It collects staging "
                                "itself (--staging-max-age-s); stop it to collect by hand"
                                if exclusive else f"{self.root} is being garbage-collected "
                                "(`vlac store gc`); start ingest when it is done") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def collect_staging(self, older_than_s: float) -> list[dict[str, Any]]:
        """Remove episodes that stayed incomplete for ``older_than_s`` seconds since their
        last chunk (a robot that crashed mid-episode never sends the rest); returns what
        was dropped, each logged. Complete episodes are never touched: only folders under
        ``staging/`` of episodes not complete are removed."""
        if self.read_only:
            raise PermissionError(f"the store at {self.root} was opened read-only")
        dropped = []
        with self._lock:
            for inc in self.incomplete():
                key = (inc["robot_id"], inc["episode_id"])
                if inc["age_s"] < older_than_s or key in self._complete:
                    continue
                edir = self._staging_dir(*key)
                if (edir / "_episode.json").exists():  # complete: recovery moves it, not gc
                    continue
                shutil.rmtree(edir)
                if self.fsync:
                    fsync_path(edir.parent)
                del self._staged[key]
                log.warning("dropped incomplete episode %s/%s from staging: %d chunks "
                            "(%s), %.0f KB, no chunk for %.0f s", *key, len(inc["chunks"]),
                            "final seen" if inc["final_seen"] else "no final",
                            inc["bytes"] / 1e3, inc["age_s"])
                dropped.append(inc)
        return dropped

    def _episode_table(self, robot_id: str, episode_id: str,
                       columns: list[str] | None = None) -> tuple[dict[str, Any], pa.Table]:
        """A complete episode's summary and its chunks concatenated in order."""
        edir = self.episode_dir(robot_id, episode_id)
        meta_file = edir / "_episode.json"
        if not meta_file.exists():
            raise KeyError(f"no complete episode {robot_id}/{episode_id} in {self.root}; "
                           "`vlac store ls` lists them")
        info = json.loads(meta_file.read_text())
        files = [edir / f"chunk-{s:07d}.parquet" for s in range(info["n_chunks"])]
        return info, pa.concat_tables([pq.read_table(f, columns=columns) for f in files])

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

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

Durability: a chunk file is written under a temporary name, fsynced, linked to its final name
and its folder fsynced before ``write_chunk`` returns; ingest acknowledges only then. An episode
is complete when its final chunk (which says how many chunks there are) and every earlier chunk
are stored; ``_episode.json`` is then written and the folder is moved from ``staging/`` to
``episodes/`` with one atomic rename. A chunk whose key (robot_id, episode_id, seq) is already
stored, in staging or in a complete episode, is a duplicate and is not written again. After a
crash, ``EpisodeStore(root)`` rebuilds its index from the folders and finishes any episode that
was complete but not yet moved.

Several writers on one host (ingest shards) may share the folder (``vlac.cloud.store.base``
says how the index copes): a chunk file is linked into place, which fails if it exists, so a
chunk two writers store at once is stored once and the second one answers "duplicate";
temporary files carry their writer's pid, so a starting writer removes only those of writers
that are gone; and a writer whose rename to ``episodes/`` fails because another writer moved
the episode first takes it as complete. (On a network file system shared by several hosts,
the pid check does not hold: there, use the S3 store, ``vlac.cloud.store.s3``.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlac.cloud.store.base import (
    ChunkWrite,
    Episode,
    IndexedStore,
    Key,
    StoreBusy,
    StoreUnavailable,
    chunk_name,
)
from vlac.cloud.store.parquet import META_KEY, steps_to_table
from vlac.cloud.store.staging import Staged, staged_from_chunks
from vlac.shared.fsutil import fsync_path

__all__ = ["ChunkWrite", "Episode", "EpisodeStore", "StoreBusy", "StoreUnavailable"]

log = logging.getLogger(__name__)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # moved to episodes/ meanwhile
        return 0


def _staged_from_files(edir: Path) -> Staged | None:
    """An episode's staging state rebuilt from its chunk files (None if it has none)."""
    metas = []
    for f in sorted(edir.glob("chunk-*.parquet")):
        try:
            meta = json.loads(pq.read_schema(f).metadata[META_KEY])
            if meta.get("first_step") is None:  # written before chunks recorded it
                meta["first_step"] = int(pq.read_table(f, columns=["step"])
                                         .column("step")[0].as_py())
            metas.append((meta, f.stat().st_mtime))
        except FileNotFoundError:  # moved to episodes/ by a writer meanwhile
            continue
    return staged_from_chunks(metas)


def _writer_gone(tmp: Path) -> bool:
    """Whether the writer that made temporary file ``tmp`` (``.tmp-<pid>-...``) is gone; a
    name without a pid is from before writers tagged theirs, so from a writer now gone."""
    pid = tmp.name[5:].split("-", 1)[0]
    if not pid.isdigit():
        return True
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _link_new(tmp: Path, dest: Path) -> bool:
    """Give ``tmp`` the name ``dest`` unless ``dest`` exists (False then): unlike a rename,
    a link never replaces, so of two writers storing one chunk exactly one stores it."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        return False
    return True


class EpisodeStore(IndexedStore):
    """Exactly-once, durable store of episode chunks in a folder. Thread-safe.

    ``read_only=True`` is a reader beside a running ingest (the learner): it never touches
    ``staging/`` (no crash recovery, which would race the writer) and refuses writes."""

    def __init__(self, root: str | Path, *, fsync: bool = True,
                 compression: str = "zstd", read_only: bool = False) -> None:
        super().__init__(read_only=read_only)
        self.root = Path(root)
        self.staging = self.root / "staging"
        self.episodes = self.root / "episodes"
        self.fsync = fsync
        self.compression = compression
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

    def _tmp_name(self, name: str) -> str:
        return f".tmp-{os.getpid()}-{name}"

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
                    if _writer_gone(tmp):  # never acknowledged: the robot still has it
                        tmp.unlink(missing_ok=True)
                if key in self._complete:  # crashed after the move's copy: drop leftovers
                    shutil.rmtree(edir, ignore_errors=True)
                    continue
                st = _staged_from_files(edir)
                if st is not None:
                    self._staged[key] = st
                    with self._lock:
                        self._maybe_complete(key)

    # ------------------------------------------------------------------ backend
    def _lookup(self, key: Key) -> Staged | bool | None:
        if self.is_complete(*key):
            return True
        edir = self._staging_dir(*key)
        return _staged_from_files(edir) if edir.is_dir() else None

    def _store_new(self, chunks: list[ChunkWrite]) -> list[bool]:
        """All files are written, then fsynced together, then linked into place and each
        folder fsynced once, so a batch costs little more than one chunk. No temporary file
        is left behind, whatever raises."""
        files: list[tuple[Path, Path]] = []
        try:
            # Parquet building and its zstd release the GIL: a batch's files are written on
            # the pool's threads at once, so ingest uses more than one core.
            if len(chunks) == 1:
                files.append(self._write_tmp(chunks[0]))
            else:
                futures = [self._pool().submit(self._write_tmp, c) for c in chunks]
                wait(futures)
                files += [f.result() for f in futures if f.exception() is None]
                for f in futures:  # after every written file is listed, for the cleanup
                    if f.exception() is not None:
                        raise f.exception()
            if self.fsync:
                # fsync releases the GIL: concurrent fsyncs share the file system's journal
                # commits, which is where batching pays.
                list(self._pool().map(fsync_path, [tmp for tmp, _ in files]))
            new = [_link_new(tmp, dest) for tmp, dest in files]
        finally:
            for tmp, _ in files:
                tmp.unlink(missing_ok=True)
        if self.fsync:
            for d in {dest.parent for _, dest in files}:
                fsync_path(d)
        return new

    def _write_tmp(self, c: ChunkWrite) -> tuple[Path, Path]:
        """Write a chunk's file under a temporary name; returns (temporary, final) paths."""
        edir = self._staging_dir(c.robot_id, c.episode_id)
        edir.mkdir(parents=True, exist_ok=True)
        name = chunk_name(c.seq)
        fd, tmp_name = tempfile.mkstemp(dir=edir, prefix=self._tmp_name(name) + ".")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                pq.write_table(steps_to_table(c.steps, c.first_step, c.meta()), f,
                               compression=self.compression, use_dictionary=False,
                               write_statistics=False)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, edir / name

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(4, thread_name_prefix="store-fsync")
        return self._executor

    def _finish(self, key: Key, st: Staged) -> bool:
        src, dest = self._staging_dir(*key), self.episode_dir(*key)
        tmp = src / self._tmp_name("_episode.json")
        try:
            with open(tmp, "w") as f:
                json.dump(st.manifest(*key), f, indent=1)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, src / "_episode.json")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dest)  # atomic: the episode appears whole or not at all
        except OSError:
            if not self.is_complete(*key):
                raise
            # another writer moved it first (its rename won): ours are leftovers
            for stray in (tmp, dest / tmp.name):
                stray.unlink(missing_ok=True)
            self._drop_staging(key)
            return False
        if self.fsync:
            fsync_path(dest.parent)
            fsync_path(src.parent)
        return True

    def _drop_staging(self, key: Key) -> None:
        edir = self._staging_dir(*key)
        if edir.exists():
            shutil.rmtree(edir, ignore_errors=True)
            if self.fsync:
                fsync_path(edir.parent)

    def is_complete(self, robot_id: str, episode_id: str) -> bool:
        return (self.episode_dir(robot_id, episode_id) / "_episode.json").exists()

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

    def _episode_table(self, robot_id: str, episode_id: str,
                       columns: list[str] | None = None) -> tuple[dict[str, Any], pa.Table]:
        """A complete episode's summary and its chunks concatenated in order."""
        edir = self.episode_dir(robot_id, episode_id)
        meta_file = edir / "_episode.json"
        if not meta_file.exists():
            raise self._missing(robot_id, episode_id)
        info = json.loads(meta_file.read_text())
        files = [edir / chunk_name(s) for s in range(info["n_chunks"])]
        return info, pa.concat_tables([pq.read_table(f, columns=columns) for f in files])

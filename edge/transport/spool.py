"""A durable, bounded, on-disk queue of encoded episode chunks.

Every chunk is written to its own file (write to a temporary name, fsync, rename, fsync the
folder) before ``put`` returns, so a chunk that ``put`` accepted survives a crash or power
loss and is sent again after a restart. File names start with a monotonically increasing
counter, so the send order survives restarts too. A chunk leaves the spool only when the
cloud acknowledged it as durably stored (``remove``) or refused it as invalid (``reject``,
which moves it to ``rejected/`` with the reason beside it: nothing is deleted silently).

When the spool is full (``max_bytes`` or ``max_chunks``), ``on_full`` decides, explicitly:
- ``block``: wait up to ``block_timeout_s`` for the sender to drain, then raise SpoolFull;
- ``drop_oldest``: delete the oldest whole episode(s) still spooled, log a warning naming
  them, and count them in ``dropped_chunks``;
- ``error``: raise SpoolFull at once.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlac.shared.fsutil import fsync_path

log = logging.getLogger(__name__)

OnFull = Literal["block", "drop_oldest", "error"]
_NAME_RE = re.compile(r"^(\d{12})__([A-Za-z0-9_.-]+)__(\d{7})\.chunk$")


class SpoolFull(RuntimeError):
    """The spool cannot take another chunk. The message says which limit and what to do."""


@dataclass(frozen=True)
class SpoolEntry:
    counter: int
    episode_id: str
    seq: int
    path: Path
    size: int

    @property
    def key(self) -> tuple[str, int]:
        return (self.episode_id, self.seq)


class Spool:
    def __init__(self, root: str | Path, *, max_bytes: int = 2 * 1024**3,
                 max_chunks: int = 100_000, on_full: OnFull = "block",
                 block_timeout_s: float = 60.0, fsync: bool = True) -> None:
        if on_full not in ("block", "drop_oldest", "error"):
            raise ValueError(f"on_full={on_full!r}: use 'block', 'drop_oldest' or 'error'")
        if max_bytes <= 0 or max_chunks <= 0:
            raise ValueError("spool max_bytes and max_chunks must be positive")
        self.root = Path(root)
        self.rejected_dir = self.root / "rejected"
        self.root.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(exist_ok=True)
        self.max_bytes = max_bytes
        self.max_chunks = max_chunks
        self.on_full = on_full
        self.block_timeout_s = block_timeout_s
        self.fsync = fsync
        self.dropped_chunks = 0
        self._cond = threading.Condition()
        self._entries: dict[tuple[str, int], SpoolEntry] = {}
        self._bytes = 0
        self._counter = 0
        self._recover()

    # ------------------------------------------------------------------ state
    def _recover(self) -> None:
        """Load what a previous process left: finished files are pending, temp files are
        half-written chunks that were never acknowledged to the caller, so they go."""
        for p in self.root.iterdir():
            if p.name.startswith(".tmp-"):
                p.unlink(missing_ok=True)
                continue
            m = _NAME_RE.fullmatch(p.name)
            if not m:
                continue
            e = SpoolEntry(int(m[1]), m[2], int(m[3]), p, p.stat().st_size)
            self._entries[e.key] = e
            self._bytes += e.size
            self._counter = max(self._counter, e.counter + 1)
        if self._entries:
            log.info("spool %s: resuming with %d chunks (%d bytes) from a previous run",
                     self.root, len(self._entries), self._bytes)

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        with self._cond:
            return self._bytes

    def pending(self) -> list[SpoolEntry]:
        """Spooled chunks, oldest first."""
        with self._cond:
            return sorted(self._entries.values(), key=lambda e: e.counter)

    def __contains__(self, key: tuple[str, int]) -> bool:
        with self._cond:
            return key in self._entries

    def read(self, entry: SpoolEntry) -> bytes:
        return entry.path.read_bytes()

    # ------------------------------------------------------------------ writes
    def _full(self, extra: int) -> bool:
        return (len(self._entries) + 1 > self.max_chunks
                or self._bytes + extra > self.max_bytes)

    def _make_room(self, size: int) -> None:
        if size > self.max_bytes:
            raise SpoolFull(f"a chunk of {size} bytes is larger than the whole spool "
                            f"(max_bytes={self.max_bytes}); raise max_bytes or send fewer "
                            "steps per chunk")
        if not self._full(size):
            return
        if self.on_full == "error":
            raise SpoolFull(f"spool {self.root} is full ({len(self._entries)} chunks, "
                            f"{self._bytes} bytes; limits {self.max_chunks} chunks, "
                            f"{self.max_bytes} bytes): the cloud is not acknowledging. "
                            "Check the connection, or set on_full to 'block' or "
                            "'drop_oldest'")
        if self.on_full == "block":
            deadline = time.monotonic() + self.block_timeout_s
            while self._full(size):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SpoolFull(f"spool {self.root} stayed full for "
                                    f"{self.block_timeout_s:.0f}s ({len(self._entries)} "
                                    f"chunks, {self._bytes} bytes): the cloud is not "
                                    "acknowledging. Check the connection to ingest")
                self._cond.wait(left)
            return
        # drop_oldest: drop whole episodes, oldest first, until the chunk fits.
        while self._full(size) and self._entries:
            oldest = min(self._entries.values(), key=lambda e: e.counter)
            victims = [e for e in self._entries.values() if e.episode_id == oldest.episode_id]
            for e in victims:
                self._delete(e)
            self.dropped_chunks += len(victims)
            log.warning("spool %s full: DROPPED episode %s (%d chunks) to make room; "
                        "%d chunks dropped so far", self.root, oldest.episode_id,
                        len(victims), self.dropped_chunks)

    def put(self, episode_id: str, seq: int, data: bytes) -> SpoolEntry:
        """Durably store one encoded chunk. Returns once it is on disk."""
        with self._cond:
            key = (episode_id, seq)
            if key in self._entries:
                return self._entries[key]
            self._make_room(len(data))
            counter = self._counter
            self._counter += 1
        name = f"{counter:012d}__{episode_id}__{seq:07d}.chunk"
        tmp = self.root / f".tmp-{name}"
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        path = self.root / name
        os.replace(tmp, path)
        if self.fsync:
            fsync_path(self.root)
        entry = SpoolEntry(counter, episode_id, seq, path, len(data))
        with self._cond:
            self._entries[key] = entry
            self._bytes += entry.size
            self._cond.notify_all()
        return entry

    def _delete(self, entry: SpoolEntry) -> None:
        entry.path.unlink(missing_ok=True)
        self._entries.pop(entry.key, None)
        self._bytes -= entry.size

    def remove(self, episode_id: str, seq: int) -> bool:
        """Forget an acknowledged chunk. Returns False if it was not spooled."""
        with self._cond:
            entry = self._entries.get((episode_id, seq))
            if entry is None:
                return False
            self._delete(entry)
            self._cond.notify_all()
            return True

    def reject(self, episode_id: str, seq: int, reason: str) -> Path | None:
        """Move a chunk the cloud refused into ``rejected/`` with the reason beside it."""
        with self._cond:
            entry = self._entries.pop((episode_id, seq), None)
            if entry is None:
                return None
            self._bytes -= entry.size
            dest = self.rejected_dir / entry.path.name
            os.replace(entry.path, dest)
            dest.with_suffix(".reason.txt").write_text(reason + "\n")
            self._cond.notify_all()
        log.error("chunk %s/%d refused by ingest and kept in %s: %s", episode_id, seq, dest,
                  reason)
        return dest

    def rejected(self) -> list[Path]:
        return sorted(self.rejected_dir.glob("*.chunk"))

    def wait_empty(self, timeout: float) -> bool:
        """Block until every chunk is acknowledged (or rejected), or the timeout passes."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._entries:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

"""Fleet state: which versions exist, which robot should run which, and what each one runs.

One SQLite file (``fleet.db`` in WAL mode, so the publisher, ingest and ``vlac fleet`` can use
it from separate processes at once). It survives restarts of every process. Tables:

- ``versions``: every published version (parent, object keys, size, sha256, time);
- ``settings``: the production version, the canary (version plus a group or a fraction),
  the next assignment sequence number and a revision counter bumped on every change
  (the publisher polls it);
- ``pins``: robot or group -> version;
- ``groups``: robot -> group;
- ``robots``: what robots report (last seen, running version, last update error, spool
  depth, weight announcements their updater refused or saw replayed);
- ``assignments``: the last signed announcement per robot (re-sent as is, same sequence, so a
  robot that already applied it ignores it);
- ``events``: an audit log of every fleet command.

Which version a robot should run (``target``): its own pin, else its group's pin, else the
canary version if it is in the canary (its group, or a stable hash of its id below the
fraction), else production. An assignment is a *downgrade* (which robots refuse unless it is
signed as one) when its version is below the highest version the fleet has promoted or
canaried, which is exactly a rollback, a pin to an older version, or a canary's end.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (version INTEGER PRIMARY KEY, parent INTEGER,
  manifest_key TEXT, artifact_key TEXT, size INTEGER, sha256 TEXT, created_at REAL,
  meta TEXT DEFAULT '{}');
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS pins (kind TEXT, name TEXT, version INTEGER,
  PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS groups (robot_id TEXT PRIMARY KEY, grp TEXT);
CREATE TABLE IF NOT EXISTS robots (robot_id TEXT PRIMARY KEY, first_seen REAL, last_seen REAL,
  running_version INTEGER DEFAULT -1, update_error TEXT DEFAULT '', spool_depth INTEGER DEFAULT 0,
  announcements_refused INTEGER DEFAULT 0, announcements_replayed INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS assignments (robot_id TEXT PRIMARY KEY, seq INTEGER,
  version INTEGER, reason TEXT, blob BLOB, issued_at REAL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL,
  action TEXT, detail TEXT);
"""

ADDED_COLUMNS = {"robots": (("announcements_refused", "INTEGER DEFAULT 0"),
                            ("announcements_replayed", "INTEGER DEFAULT 0"))}
"""Columns newer than the first schema: a fleet.db made by an older version gains them on
open (SQLite's CREATE TABLE IF NOT EXISTS leaves an existing table as it is)."""


class FleetError(ValueError):
    """A fleet command that cannot be applied; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    version: int
    reason: str
    downgrade: bool


def in_fraction(robot_id: str, fraction: float) -> bool:
    """Stable membership of a robot in a canary fraction (same answer on every host)."""
    h = int.from_bytes(hashlib.sha256(robot_id.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


class FleetState:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        with self._tx() as db:  # re-checked inside the write lock: safe from many processes
            for table, columns in ADDED_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, decl in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------ settings
    def _get(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def _set(self, db, key: str, value: Any) -> None:
        db.execute("INSERT INTO settings(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE "
                   "SET value=excluded.value", (key, json.dumps(value)))

    def _changed(self, db, action: str, detail: dict) -> None:
        db.execute("INSERT INTO settings(key, value) VALUES('revision', '1') ON CONFLICT(key) "
                   "DO UPDATE SET value=CAST(value AS INTEGER)+1")
        db.execute("INSERT INTO events(time, action, detail) VALUES(?, ?, ?)",
                   (time.time(), action, json.dumps(detail)))

    @property
    def revision(self) -> int:
        return int(self._get("revision", 0))

    @property
    def production(self) -> int | None:
        return self._get("production")

    @property
    def canary(self) -> dict | None:
        return self._get("canary")

    def next_seq(self) -> int:
        with self._tx() as db:
            seq = int(self._get("seq", 0)) + 1
            self._set(db, "seq", seq)
        return seq

    # ------------------------------------------------------------------ versions
    def add_version(self, version: int, parent: int, manifest_key: str, artifact_key: str,
                    size: int, sha256: str, meta: dict | None = None) -> None:
        with self._tx() as db:
            if db.execute("SELECT 1 FROM versions WHERE version=?", (version,)).fetchone():
                raise FleetError(f"version {version} is already published; versions are "
                                 "immutable, publish a new one")
            db.execute("INSERT INTO versions VALUES(?,?,?,?,?,?,?,?)",
                       (version, parent, manifest_key, artifact_key, size, sha256,
                        time.time(), json.dumps(meta or {})))
            self._changed(db, "publish", {"version": version, "parent": parent})

    def versions(self) -> list[dict]:
        cols = ("version", "parent", "manifest_key", "artifact_key", "size", "sha256",
                "created_at")
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM versions ORDER BY version")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def version(self, version: int) -> dict:
        for v in self.versions():
            if v["version"] == version:
                return v
        known = [v["version"] for v in self.versions()]
        raise FleetError(f"version {version} was never published (known: {known or 'none'})")

    def latest_version(self) -> int | None:
        row = self.db.execute("SELECT MAX(version) FROM versions").fetchone()
        return row[0]

    # ------------------------------------------------------------------ decisions
    def promote(self, version: int) -> None:
        """Make ``version`` production for everyone not pinned; ends any canary."""
        self.version(version)
        with self._tx() as db:
            history = self._get("history", [])
            prod = self._get("production")
            if prod is not None and prod != version:
                history.append(prod)
            self._set(db, "history", history[-50:])
            self._set(db, "production", version)
            self._set(db, "canary", None)
            self._set(db, "high_water", max(version, self._get("high_water", -1)))
            self._changed(db, "promote", {"version": version, "previous": prod})

    def rollback(self, to: int | None = None) -> int:
        """Production back to ``to`` (default: the previous production). Returns it."""
        history = self._get("history", [])
        prod = self._get("production")
        if to is None:
            if not history:
                raise FleetError("nothing to roll back to: no earlier production version "
                                 "(use `vlac fleet rollback --to VERSION`)")
            to = history[-1]
        self.version(to)
        with self._tx() as db:
            if to in history:
                history = history[:history.index(to)]
            self._set(db, "history", history)
            self._set(db, "production", to)
            self._set(db, "canary", None)
            self._changed(db, "rollback", {"to": to, "from": prod})
        return to

    def start_canary(self, version: int, group: str | None = None,
                     fraction: float | None = None) -> None:
        self.version(version)
        if (group is None) == (fraction is None):
            raise FleetError("a canary needs exactly one of a group (--group NAME) or a "
                             "fraction (--fraction 0.1)")
        if fraction is not None and not 0.0 < fraction <= 1.0:
            raise FleetError(f"canary fraction {fraction} must be in (0, 1]")
        with self._tx() as db:
            self._set(db, "canary", {"version": version, "group": group, "fraction": fraction})
            self._set(db, "high_water", max(version, self._get("high_water", -1)))
            self._changed(db, "canary", {"version": version, "group": group,
                                         "fraction": fraction})

    def end_canary(self) -> None:
        with self._tx() as db:
            self._set(db, "canary", None)
            self._changed(db, "canary_end", {})

    def pin(self, version: int, robot: str | None = None, group: str | None = None) -> None:
        self.version(version)
        kind, name = self._pin_target(robot, group)
        with self._tx() as db:
            db.execute("INSERT INTO pins VALUES(?,?,?) ON CONFLICT(kind, name) DO UPDATE SET "
                       "version=excluded.version", (kind, name, version))
            self._changed(db, "pin", {kind: name, "version": version})

    def unpin(self, robot: str | None = None, group: str | None = None) -> None:
        kind, name = self._pin_target(robot, group)
        with self._tx() as db:
            db.execute("DELETE FROM pins WHERE kind=? AND name=?", (kind, name))
            self._changed(db, "unpin", {kind: name})

    @staticmethod
    def _pin_target(robot: str | None, group: str | None) -> tuple[str, str]:
        if (robot is None) == (group is None):
            raise FleetError("name exactly one of --robot ID or --group NAME")
        return ("robot", robot) if robot is not None else ("group", group)  # type: ignore

    def set_group(self, group: str, robots: list[str]) -> None:
        with self._tx() as db:
            for r in robots:
                db.execute("INSERT INTO groups VALUES(?, ?) ON CONFLICT(robot_id) DO UPDATE "
                           "SET grp=excluded.grp", (r, group))
            self._changed(db, "group", {"group": group, "robots": robots})

    def group_of(self, robot_id: str) -> str | None:
        row = self.db.execute("SELECT grp FROM groups WHERE robot_id=?", (robot_id,)).fetchone()
        return row[0] if row else None

    def pins(self) -> dict[tuple[str, str], int]:
        return {(k, n): v for k, n, v in self.db.execute("SELECT kind, name, version FROM pins")}

    def target(self, robot_id: str) -> Target | None:
        """The version ``robot_id`` should run, and why; None before anything is promoted."""
        pins = self.pins()
        group = self.group_of(robot_id)
        high = self._get("high_water", -1)
        version, reason = None, ""
        if ("robot", robot_id) in pins:
            version, reason = pins[("robot", robot_id)], "pin"
        elif group is not None and ("group", group) in pins:
            version, reason = pins[("group", group)], f"pin:{group}"
        else:
            canary = self._get("canary")
            if canary and ((canary["group"] is not None and canary["group"] == group) or
                           (canary["fraction"] is not None
                            and in_fraction(robot_id, canary["fraction"]))):
                version, reason = canary["version"], "canary"
            elif self._get("production") is not None:
                version, reason = self._get("production"), "production"
        if version is None:
            return None
        return Target(version, reason, downgrade=version < high)

    # ------------------------------------------------------------------ robots
    def robot_seen(self, robot_id: str, running_version: int | None = None,
                   update_error: str | None = None, spool_depth: int | None = None, *,
                   announcements_refused: int | None = None,
                   announcements_replayed: int | None = None) -> None:
        """Record a sign of life (and what the robot reports; None leaves a field as it is).
        The announcement counts are the robot updater's since it started."""
        now = time.time()
        with self._tx() as db:
            db.execute("INSERT INTO robots(robot_id, first_seen, last_seen) VALUES(?,?,?) "
                       "ON CONFLICT(robot_id) DO UPDATE SET last_seen=excluded.last_seen",
                       (robot_id, now, now))
            if running_version is not None:
                db.execute("UPDATE robots SET running_version=? WHERE robot_id=?",
                           (running_version, robot_id))
            if update_error is not None:
                db.execute("UPDATE robots SET update_error=? WHERE robot_id=?",
                           (update_error, robot_id))
            if spool_depth is not None:
                db.execute("UPDATE robots SET spool_depth=? WHERE robot_id=?",
                           (spool_depth, robot_id))
            if announcements_refused is not None:
                db.execute("UPDATE robots SET announcements_refused=? WHERE robot_id=?",
                           (announcements_refused, robot_id))
            if announcements_replayed is not None:
                db.execute("UPDATE robots SET announcements_replayed=? WHERE robot_id=?",
                           (announcements_replayed, robot_id))

    def robots(self) -> list[dict]:
        cols = ("robot_id", "first_seen", "last_seen", "running_version", "update_error",
                "spool_depth", "announcements_refused", "announcements_replayed")
        rows = self.db.execute(f"SELECT {', '.join(cols)} FROM robots ORDER BY robot_id")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    # ------------------------------------------------------------------ announcements
    def last_assignment(self, robot_id: str) -> tuple[int, int, bytes] | None:
        """(seq, version, announcement bytes) last issued to ``robot_id``."""
        row = self.db.execute("SELECT seq, version, blob FROM assignments WHERE robot_id=?",
                              (robot_id,)).fetchone()
        return None if row is None else (row[0], row[1], bytes(row[2]))

    def record_assignment(self, robot_id: str, seq: int, version: int, reason: str,
                          blob: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO assignments VALUES(?,?,?,?,?,?) ON CONFLICT(robot_id) DO "
                       "UPDATE SET seq=excluded.seq, version=excluded.version, "
                       "reason=excluded.reason, blob=excluded.blob, "
                       "issued_at=excluded.issued_at",
                       (robot_id, seq, version, reason, blob, time.time()))

    def assignments(self) -> dict[str, dict]:
        rows = self.db.execute("SELECT robot_id, seq, version, reason, issued_at FROM "
                               "assignments")
        return {r: {"seq": s, "version": v, "reason": why, "issued_at": t}
                for r, s, v, why, t in rows}

    def events(self, limit: int = 20) -> list[dict]:
        rows = self.db.execute("SELECT time, action, detail FROM events ORDER BY id DESC "
                               "LIMIT ?", (limit,))
        return [{"time": t, "action": a, "detail": json.loads(d)} for t, a, d in rows]

"""Fleet state: which versions exist, which robot should run which, and what each one runs.

One SQLite file by default (``fleet.db`` in the fleet folder, WAL mode), or a PostgreSQL
database given by a ``postgresql://`` URL (``--fleet-url``: a fleet served from several
hosts); ``open_fleet_state`` picks one. Either way the publisher, ingest and ``vlac fleet``
use it from separate processes at once, every write is one transaction that writers take in
turns, and it survives restarts of every process (``schema`` has the tables, migrations and
reconnects). Tables:

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from vlac.cloud.fleet.schema import (
    ADDED_COLUMNS,
    URL_SCHEMES,
    Database,
    FleetStateUnavailable,
    create_and_migrate,
)

__all__ = ["ADDED_COLUMNS", "FleetError", "FleetState", "FleetStateUnavailable", "Target",
           "check_fleet_url", "in_fraction", "open_fleet_state"]

URL_HELP = ("Fleet state in PostgreSQL instead of fleet_dir/fleet.db (SQLite): "
            "postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE; empty: SQLite.")
"""The help of every config's ``fleet_url`` field."""


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


def check_fleet_url(url: str, field: str = "fleet_url") -> None:
    """For configs' ``__post_init__``: empty (SQLite) or a PostgreSQL URL."""
    from vlac.shared.config import check

    check(not url or url.startswith(URL_SCHEMES), field,
          f"{url!r} is not a PostgreSQL URL: give postgresql://USER@HOST:PORT/DATABASE, or "
          "leave it empty for SQLite in the fleet folder")


def open_fleet_state(fleet_dir: str | Path | None, url: str = "") -> FleetState:
    """The fleet state a process uses: PostgreSQL at ``url`` when given, else SQLite at
    ``fleet_dir/fleet.db``."""
    if url:
        return FleetState(url)
    if fleet_dir is None:
        raise FleetError("no fleet state: give a fleet folder (--fleet-dir) or a PostgreSQL "
                         "URL (--fleet-url)")
    return FleetState(Path(fleet_dir) / "fleet.db")


# ---------------------------------------------------------------------- SQL on one connection
def _get(c: Connection, key: str, default: Any = None) -> Any:
    row = c.execute(text("SELECT value FROM settings WHERE key=:k"), {"k": key}).fetchone()
    return default if row is None else json.loads(row[0])


def _set(c: Connection, key: str, value: Any) -> None:
    c.execute(text("INSERT INTO settings(key, value) VALUES(:k, :v) ON CONFLICT(key) DO UPDATE "
                   "SET value=excluded.value"), {"k": key, "v": json.dumps(value)})


def _changed(c: Connection, action: str, detail: dict) -> None:
    """Bump the revision (the announcer polls it) and write the audit log."""
    c.execute(text("INSERT INTO settings(key, value) VALUES('revision', '1') ON CONFLICT(key) "
                   "DO UPDATE SET value=CAST(CAST(settings.value AS INTEGER)+1 AS TEXT)"))
    c.execute(text("INSERT INTO events(time, action, detail) VALUES(:t, :a, :d)"),
              {"t": time.time(), "a": action, "d": json.dumps(detail)})


_VERSION_COLS = ("version", "parent", "manifest_key", "artifact_key", "size", "sha256",
                 "created_at")
_ROBOT_COLS = ("robot_id", "first_seen", "last_seen", "running_version", "update_error",
               "spool_depth", "announcements_refused", "announcements_replayed")


def _versions(c: Connection, where: str = "", params: dict | None = None) -> list[dict]:
    rows = c.execute(text(f"SELECT {', '.join(_VERSION_COLS)} FROM versions {where} "
                          "ORDER BY version"), params or {})
    return [dict(zip(_VERSION_COLS, r, strict=True)) for r in rows]


def _version(c: Connection, version: int) -> dict:
    found = _versions(c, "WHERE version=:v", {"v": version})
    if found:
        return found[0]
    known = [v["version"] for v in _versions(c)]
    raise FleetError(f"version {version} was never published (known: {known or 'none'})")


class FleetState:
    """The fleet state at ``target``: a SQLite file path, or a ``postgresql://`` URL."""

    def __init__(self, target: str | Path) -> None:
        self.db = Database(target)
        self.where = self.db.where
        """The path, or the URL without its password (for messages)."""
        self.db.write(create_and_migrate)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ settings
    def _setting(self, key: str, default: Any = None) -> Any:
        return self.db.read(lambda c: _get(c, key, default))

    @property
    def revision(self) -> int:
        return int(self._setting("revision", 0))

    @property
    def production(self) -> int | None:
        return self._setting("production")

    @property
    def canary(self) -> dict | None:
        return self._setting("canary")

    def next_seq(self) -> int:
        """The next assignment sequence number: strictly increasing, across processes too."""
        def tx(c: Connection) -> int:
            seq = int(_get(c, "seq", 0)) + 1
            _set(c, "seq", seq)
            return seq

        return self.db.write(tx)

    # ------------------------------------------------------------------ versions
    def add_version(self, version: int, parent: int, manifest_key: str, artifact_key: str,
                    size: int, sha256: str, meta: dict | None = None) -> None:
        def tx(c: Connection) -> None:
            if _versions(c, "WHERE version=:v", {"v": version}):
                raise FleetError(f"version {version} is already published; versions are "
                                 "immutable, publish a new one")
            c.execute(text("INSERT INTO versions(version, parent, manifest_key, artifact_key, "
                           "size, sha256, created_at, meta) VALUES(:v, :p, :m, :a, :s, :h, :t, "
                           ":meta)"),
                      {"v": version, "p": parent, "m": manifest_key, "a": artifact_key,
                       "s": size, "h": sha256, "t": time.time(), "meta": json.dumps(meta or {})})
            _changed(c, "publish", {"version": version, "parent": parent})

        self.db.write(tx)

    def versions(self) -> list[dict]:
        return self.db.read(_versions)

    def version(self, version: int) -> dict:
        return self.db.read(lambda c: _version(c, version))

    def latest_version(self) -> int | None:
        return self.db.read(lambda c: c.execute(text("SELECT MAX(version) FROM versions"))
                            .scalar())

    # ------------------------------------------------------------------ decisions
    def promote(self, version: int) -> None:
        """Make ``version`` production for everyone not pinned; ends any canary."""
        def tx(c: Connection) -> None:
            _version(c, version)
            history = _get(c, "history", [])
            prod = _get(c, "production")
            if prod is not None and prod != version:
                history.append(prod)
            _set(c, "history", history[-50:])
            _set(c, "production", version)
            _set(c, "canary", None)
            _set(c, "high_water", max(version, _get(c, "high_water", -1)))
            _changed(c, "promote", {"version": version, "previous": prod})

        self.db.write(tx)

    def rollback(self, to: int | None = None) -> int:
        """Production back to ``to`` (default: the previous production). Returns it."""
        def tx(c: Connection) -> int:
            history = _get(c, "history", [])
            prod = _get(c, "production")
            target = to
            if target is None:
                if not history:
                    raise FleetError("nothing to roll back to: no earlier production version "
                                     "(use `vlac fleet rollback --to VERSION`)")
                target = history[-1]
            _version(c, target)
            if target in history:
                history = history[:history.index(target)]
            _set(c, "history", history)
            _set(c, "production", target)
            _set(c, "canary", None)
            _changed(c, "rollback", {"to": target, "from": prod})
            return target

        return self.db.write(tx)

    def start_canary(self, version: int, group: str | None = None,
                     fraction: float | None = None) -> None:
        def tx(c: Connection) -> None:
            _version(c, version)
            if (group is None) == (fraction is None):
                raise FleetError("a canary needs exactly one of a group (--group NAME) or a "
                                 "fraction (--fraction 0.1)")
            if fraction is not None and not 0.0 < fraction <= 1.0:
                raise FleetError(f"canary fraction {fraction} must be in (0, 1]")
            _set(c, "canary", {"version": version, "group": group, "fraction": fraction})
            _set(c, "high_water", max(version, _get(c, "high_water", -1)))
            _changed(c, "canary", {"version": version, "group": group, "fraction": fraction})

        self.db.write(tx)

    def end_canary(self) -> None:
        def tx(c: Connection) -> None:
            _set(c, "canary", None)
            _changed(c, "canary_end", {})

        self.db.write(tx)

    def pin(self, version: int, robot: str | None = None, group: str | None = None) -> None:
        def tx(c: Connection) -> None:
            _version(c, version)
            kind, name = self._pin_target(robot, group)
            c.execute(text("INSERT INTO pins(kind, name, version) VALUES(:k, :n, :v) "
                           "ON CONFLICT(kind, name) DO UPDATE SET version=excluded.version"),
                      {"k": kind, "n": name, "v": version})
            _changed(c, "pin", {kind: name, "version": version})

        self.db.write(tx)

    def unpin(self, robot: str | None = None, group: str | None = None) -> None:
        kind, name = self._pin_target(robot, group)

        def tx(c: Connection) -> None:
            c.execute(text("DELETE FROM pins WHERE kind=:k AND name=:n"), {"k": kind, "n": name})
            _changed(c, "unpin", {kind: name})

        self.db.write(tx)

    @staticmethod
    def _pin_target(robot: str | None, group: str | None) -> tuple[str, str]:
        if (robot is None) == (group is None):
            raise FleetError("name exactly one of --robot ID or --group NAME")
        return ("robot", robot) if robot is not None else ("group", group)  # type: ignore

    def set_group(self, group: str, robots: list[str]) -> None:
        def tx(c: Connection) -> None:
            for r in robots:
                c.execute(text("INSERT INTO groups(robot_id, grp) VALUES(:r, :g) "
                               "ON CONFLICT(robot_id) DO UPDATE SET grp=excluded.grp"),
                          {"r": r, "g": group})
            _changed(c, "group", {"group": group, "robots": robots})

        self.db.write(tx)

    def group_of(self, robot_id: str) -> str | None:
        return self.db.read(lambda c: c.execute(
            text("SELECT grp FROM groups WHERE robot_id=:r"), {"r": robot_id}).scalar())

    def pins(self) -> dict[tuple[str, str], int]:
        return self.db.read(lambda c: {(k, n): v for k, n, v in c.execute(
            text("SELECT kind, name, version FROM pins"))})

    def target(self, robot_id: str) -> Target | None:
        """The version ``robot_id`` should run, and why; None before anything is promoted."""
        def read(c: Connection) -> Target | None:
            pins = {(k, n): v for k, n, v in c.execute(
                text("SELECT kind, name, version FROM pins"))}
            group = c.execute(text("SELECT grp FROM groups WHERE robot_id=:r"),
                              {"r": robot_id}).scalar()
            version, reason = None, ""
            if ("robot", robot_id) in pins:
                version, reason = pins[("robot", robot_id)], "pin"
            elif group is not None and ("group", group) in pins:
                version, reason = pins[("group", group)], f"pin:{group}"
            else:
                canary = _get(c, "canary")
                if canary and ((canary["group"] is not None and canary["group"] == group) or
                               (canary["fraction"] is not None
                                and in_fraction(robot_id, canary["fraction"]))):
                    version, reason = canary["version"], "canary"
                elif (prod := _get(c, "production")) is not None:
                    version, reason = prod, "production"
            if version is None:
                return None
            return Target(version, reason, downgrade=version < _get(c, "high_water", -1))

        return self.db.read(read)

    # ------------------------------------------------------------------ robots
    def robot_seen(self, robot_id: str, running_version: int | None = None,
                   update_error: str | None = None, spool_depth: int | None = None, *,
                   announcements_refused: int | None = None,
                   announcements_replayed: int | None = None) -> None:
        """Record a sign of life (and what the robot reports; None leaves a field as it is).
        The announcement counts are the robot updater's since it started."""
        now = time.time()
        reported = {"running_version": running_version, "update_error": update_error,
                    "spool_depth": spool_depth, "announcements_refused": announcements_refused,
                    "announcements_replayed": announcements_replayed}
        given = {k: v for k, v in reported.items() if v is not None}

        def tx(c: Connection) -> None:
            c.execute(text("INSERT INTO robots(robot_id, first_seen, last_seen) VALUES(:r, :t, "
                           ":t) ON CONFLICT(robot_id) DO UPDATE SET last_seen=excluded.last_seen"),
                      {"r": robot_id, "t": now})
            if given:
                sets = ", ".join(f"{k}=:{k}" for k in given)  # names from `reported` only
                c.execute(text(f"UPDATE robots SET {sets} WHERE robot_id=:robot_id"),
                          {**given, "robot_id": robot_id})

        self.db.write(tx)

    def robots(self) -> list[dict]:
        return self.db.read(lambda c: [dict(zip(_ROBOT_COLS, r, strict=True)) for r in c.execute(
            text(f"SELECT {', '.join(_ROBOT_COLS)} FROM robots ORDER BY robot_id"))])

    # ------------------------------------------------------------------ announcements
    def last_assignment(self, robot_id: str) -> tuple[int, int, bytes] | None:
        """(seq, version, announcement bytes) last issued to ``robot_id``."""
        row = self.db.read(lambda c: c.execute(
            text("SELECT seq, version, blob FROM assignments WHERE robot_id=:r"),
            {"r": robot_id}).fetchone())
        return None if row is None else (row[0], row[1], bytes(row[2]))

    def record_assignment(self, robot_id: str, seq: int, version: int, reason: str,
                          blob: bytes) -> None:
        params = {"r": robot_id, "s": seq, "v": version, "why": reason, "b": blob,
                  "t": time.time()}
        self.db.write(lambda c: c.execute(text(
            "INSERT INTO assignments(robot_id, seq, version, reason, blob, issued_at) "
            "VALUES(:r, :s, :v, :why, :b, :t) ON CONFLICT(robot_id) DO UPDATE SET "
            "seq=excluded.seq, version=excluded.version, reason=excluded.reason, "
            "blob=excluded.blob, issued_at=excluded.issued_at"), params))

    def assignments(self) -> dict[str, dict]:
        rows = self.db.read(lambda c: c.execute(text(
            "SELECT robot_id, seq, version, reason, issued_at FROM assignments")).fetchall())
        return {r: {"seq": s, "version": v, "reason": why, "issued_at": t}
                for r, s, v, why, t in rows}

    def events(self, limit: int = 20) -> list[dict]:
        rows = self.db.read(lambda c: c.execute(text(
            "SELECT time, action, detail FROM events ORDER BY id DESC LIMIT :n"),
            {"n": limit}).fetchall())
        return [{"time": t, "action": a, "detail": json.loads(d)} for t, a, d in rows]

"""Where the fleet state lives: its tables, their migrations, and transactions on SQLite or
PostgreSQL through one SQL code path (SQLAlchemy Core; the statements are plain SQL that both
databases read the same way).

- SQLite (a path, the one-machine default): a file in WAL mode; a write transaction is
  ``BEGIN IMMEDIATE``, so writers from several processes take turns.
- PostgreSQL (a ``postgresql://user@host:port/db`` URL, for a fleet served from several
  hosts): a write transaction first takes one transaction-scoped advisory lock, so writers
  take turns exactly as on SQLite (and every read inside it sees the last writer's commit).
  A connection that broke (the server restarted) is replaced on the next call; a transaction
  that failed because its connection broke is run once more on a fresh one.

Reads outside a write run one statement at a time (autocommit), as SQLite's did before.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")

URL_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")
"""What a fleet URL may start with (psycopg 3 is the driver for all three)."""

metadata = MetaData()
Table("versions", metadata,
      Column("version", BigInteger, primary_key=True, autoincrement=False),
      Column("parent", BigInteger), Column("manifest_key", Text), Column("artifact_key", Text),
      Column("size", BigInteger), Column("sha256", Text), Column("created_at", Double),
      Column("meta", Text, server_default="{}"))
Table("settings", metadata, Column("key", Text, primary_key=True), Column("value", Text))
Table("pins", metadata, Column("kind", Text, primary_key=True),
      Column("name", Text, primary_key=True), Column("version", BigInteger))
Table("groups", metadata, Column("robot_id", Text, primary_key=True), Column("grp", Text))
Table("robots", metadata, Column("robot_id", Text, primary_key=True),
      Column("first_seen", Double), Column("last_seen", Double),
      Column("running_version", BigInteger, server_default=text("-1")),
      Column("update_error", Text, server_default=""),
      Column("spool_depth", BigInteger, server_default=text("0")),
      Column("announcements_refused", BigInteger, server_default=text("0")),
      Column("announcements_replayed", BigInteger, server_default=text("0")))
Table("assignments", metadata, Column("robot_id", Text, primary_key=True),
      Column("seq", BigInteger), Column("version", BigInteger), Column("reason", Text),
      Column("blob", LargeBinary), Column("issued_at", Double))
Table("events", metadata,
      Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
             autoincrement=True),
      Column("time", Double), Column("action", Text), Column("detail", Text),
      sqlite_autoincrement=True)

ADDED_COLUMNS = {"robots": (("announcements_refused", "INTEGER DEFAULT 0"),
                            ("announcements_replayed", "INTEGER DEFAULT 0"))}
"""Columns newer than the first schema: a fleet state made by an older version gains them on
open (creating tables leaves an existing table as it is). Add new ones here too."""

_LOCK = "SELECT pg_advisory_xact_lock(7263005419)"
"""One lock for the whole fleet state (advisory locks are per database): writers take turns."""
_BEGIN = {"sqlite": ("BEGIN IMMEDIATE",), "postgresql": ("BEGIN", _LOCK)}


class FleetStateUnavailable(RuntimeError):
    """The fleet state's database cannot be opened or reached; the message says which and
    what to do."""


def create_and_migrate(c: Connection) -> None:
    """Create missing tables and add missing columns (run inside a write transaction, so two
    processes opening a fresh or an old fleet state at once take turns)."""
    metadata.create_all(c, checkfirst=True)
    inspector = inspect(c)
    for table, columns in ADDED_COLUMNS.items():
        have = {col["name"] for col in inspector.get_columns(table)}
        for name, decl in columns:
            if name not in have:
                log.info("fleet state: adding column %s.%s", table, name)
                c.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")


def _sqlite_engine(path: Path) -> Engine:
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(URL.create("sqlite", database=str(path)), isolation_level="AUTOCOMMIT",
                           connect_args={"timeout": 30.0, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def _postgres_url(url: str) -> URL:
    fix = "give it as postgresql://USER@HOST:PORT/DATABASE"
    if not url.startswith(URL_SCHEMES):
        raise FleetStateUnavailable(f"fleet state URL {url!r} is not a PostgreSQL URL: {fix}, "
                                    "or leave the fleet URL empty for SQLite in the fleet folder")
    try:
        parsed = make_url(url)
        _ = parsed.port  # a bad port only shows when read
    except (ArgumentError, ValueError) as e:
        raise FleetStateUnavailable(f"fleet state URL {url!r} cannot be read ({e}): "
                                    f"{fix}") from None
    if not parsed.database:
        raise FleetStateUnavailable(f"fleet state URL {url!r} names no database: {fix}")
    return parsed


def _postgres_engine(parsed: URL) -> Engine:
    try:
        return create_engine(parsed.set(drivername="postgresql+psycopg"),
                             isolation_level="AUTOCOMMIT", pool_pre_ping=True, pool_size=2,
                             max_overflow=8, connect_args={"connect_timeout": 10,
                                                           "application_name": "vlac-fleet"})
    except (ImportError, NoSuchModuleError) as e:
        raise FleetStateUnavailable(f"fleet state on PostgreSQL needs psycopg 3 ({e}): "
                                    "pip install -e '.[cloud]'") from None


class Database:
    """A fleet state's engine, its write transactions and its reads, both retried once on a
    fresh connection when the connection broke."""

    def __init__(self, target: str | Path) -> None:
        if isinstance(target, str) and "://" in target:
            parsed = _postgres_url(target)
            self.where = parsed.render_as_string(hide_password=True)
            self.engine = _postgres_engine(parsed)
        else:
            self.where = str(target)
            self.engine = _sqlite_engine(Path(target))
        self.dialect = self.engine.dialect.name
        self._begin = _BEGIN[self.dialect]

    def close(self) -> None:
        self.engine.dispose()

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(connection)`` as one write transaction (writers take turns)."""
        return self._retry(fn, write=True)

    def read(self, fn: Callable[[Connection], T]) -> T:
        return self._retry(fn, write=False)

    def _retry(self, fn: Callable[[Connection], T], write: bool) -> T:
        try:
            return self._run(fn, write)
        except DBAPIError as e:
            if not self._connection_lost(e):
                raise
            log.warning("fleet state %s: no connection (%s); trying once more on a new one",
                        self.where, _first_line(e))
        time.sleep(0.1)
        try:
            return self._run(fn, write)
        except DBAPIError as e:
            if not self._connection_lost(e):
                raise
            raise self.unavailable(e) from e

    def _run(self, fn: Callable[[Connection], T], write: bool) -> T:
        with self.engine.connect() as c:
            if not write:
                return fn(c)
            for sql in self._begin:
                c.exec_driver_sql(sql)
            try:
                out = fn(c)
                c.exec_driver_sql("COMMIT")
            except BaseException:
                if not c.invalidated:  # else the server drops the transaction itself
                    with contextlib.suppress(DBAPIError):
                        c.exec_driver_sql("ROLLBACK")
                raise
            return out

    def _connection_lost(self, e: DBAPIError) -> bool:
        """A broken or refused connection (worth one retry), not a bad statement."""
        if e.connection_invalidated:
            return True
        if self.dialect != "postgresql" or not isinstance(e, OperationalError):
            return False
        state = getattr(e.orig, "sqlstate", None)  # None: no server answered
        return state is None or state.startswith(("08", "57P"))

    def unavailable(self, e: DBAPIError) -> FleetStateUnavailable:
        reason = _first_line(e)
        fix = "start PostgreSQL there (or fix the fleet URL)"
        if "refused" in reason.lower():
            reason = "connection refused"
        elif "does not exist" in reason:
            fix = "create it (createdb), or fix the fleet URL"
        return FleetStateUnavailable(f"fleet state {self.where}: {reason}; {fix}, or leave the "
                                     "fleet URL empty to use SQLite in the fleet folder")


def _first_line(e: DBAPIError) -> str:
    lines = [ln.strip() for ln in str(e.orig).splitlines() if ln.strip()]
    return lines[0] if lines else type(e.orig).__name__

"""A real PostgreSQL server for tests: initdb into a temporary folder, listening on a free
loopback port only (its unix socket in that folder), trust authentication, no fsync.

PostgreSQL refuses to run as root (CI runs as root): then initdb and pg_ctl run as the
``postgres`` system user, which owns the data folder.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vlac.shared.net import free_port

INSTALL_HINT = ("PostgreSQL is not installed: apt-get install postgresql (the server "
                "binaries initdb, pg_ctl and postgres)")


def pg_bindir() -> Path | None:
    """The folder of initdb and pg_ctl (Debian keeps them out of PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.as_postgres = os.geteuid() == 0
        # Not under pytest's tmp folder: that is private to root, and the server may not be.
        self.root = Path(tempfile.mkdtemp(prefix="vlac-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.databases = 0
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--locale=C", "--no-sync")
        conf = (f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "synchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n")
        with open(self.data / "postgresql.conf", "a") as f:  # owned by postgres; root writes
            f.write(conf)
        self.pg_ctl("start")

    def _pg(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {r.stderr[-2000:]}\n{tail}")

    def pg_ctl(self, action: str) -> None:
        """start / stop / restart (-m fast: clients are cut off, as in a real restart)."""
        mode = ["-m", "fast"] if action != "start" else []
        log = ["-l", str(self.root / "server.log")] if action != "stop" else []
        self._pg("pg_ctl", action, "-D", str(self.data), "-w", "-t", "60", *mode, *log)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        self.databases += 1
        name = f"fleet_{self.databases}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self.pg_ctl("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

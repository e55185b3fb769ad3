"""Fleet state on a real PostgreSQL server: restarts, broken connections, migrations of an
old schema (also by two processes at once), bad URLs, and the --fleet-url of each process."""

import multiprocessing as mp

import psycopg
import pytest
from sqlalchemy import text

from tests.helpers import free_port, wait_for
from vlac.cloud.fleet.state import FleetState, FleetStateUnavailable
from vlac.shared.config import ConfigError

OLD_ROBOTS_TABLE = """CREATE TABLE robots (robot_id TEXT PRIMARY KEY, first_seen DOUBLE PRECISION,
  last_seen DOUBLE PRECISION, running_version INTEGER DEFAULT -1, update_error TEXT DEFAULT '',
  spool_depth INTEGER DEFAULT 0)"""
"""The robots table before announcement counts existed (schema.ADDED_COLUMNS)."""


def robots_columns(url: str) -> list[str]:
    with psycopg.connect(url) as c:
        return [r[0] for r in c.execute("SELECT column_name FROM information_schema.columns "
                                        "WHERE table_name='robots' ORDER BY ordinal_position")]


def test_a_server_restart_between_calls_loses_nothing(postgres_server, pg_url):
    fleet = FleetState(pg_url)
    fleet.add_version(1, 0, "m1", "a1", 10, "0" * 64)
    before = [fleet.next_seq() for _ in range(5)]
    postgres_server.pg_ctl("restart")  # -m fast: every connection of the pool is cut
    after = [fleet.next_seq() for _ in range(5)]  # the next call reconnects
    fleet.promote(1)
    fleet.robot_seen("r1", 1)
    postgres_server.pg_ctl("restart")
    assert fleet.target("r1").version == 1  # a read reconnects too
    assert before + after == list(range(1, 11))
    fleet.close()
    again = FleetState(pg_url)
    assert again.next_seq() == 11 and again.production == 1
    assert [e["action"] for e in again.events()] == ["promote", "publish"]
    again.close()


def test_a_transaction_whose_connection_breaks_runs_once_more(pg_url):
    fleet = FleetState(pg_url)
    tries = []

    def tx(c):
        tries.append(c.exec_driver_sql("SELECT pg_backend_pid()").scalar())
        if len(tries) == 1:  # the server ends this session mid-transaction
            c.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
        c.execute(text("INSERT INTO settings(key, value) VALUES('probe', '1')"))
        return len(tries)

    assert fleet.db.write(tx) == 2 and tries[0] != tries[1]  # on a new connection
    assert fleet.db.read(lambda c: c.execute(text(
        "SELECT COUNT(*) FROM settings WHERE key='probe'")).scalar()) == 1  # written once
    fleet.close()


def test_a_stopped_server_is_a_clear_error_until_it_is_back(postgres_server, pg_url):
    fleet = FleetState(pg_url)
    assert fleet.next_seq() == 1
    postgres_server.pg_ctl("stop")
    try:
        with pytest.raises(FleetStateUnavailable, match=r"fleet state postgresql://postgres@"
                           r"127\.0\.0\.1:\d+/fleet_\d+: connection refused; start PostgreSQL"):
            fleet.next_seq()
        with pytest.raises(FleetStateUnavailable, match="connection refused"):
            fleet.robots()
    finally:
        postgres_server.pg_ctl("start")
    assert fleet.next_seq() == 2  # the failed calls wrote nothing, and nothing was lost
    fleet.close()


def test_bad_urls_and_unreachable_servers_say_what_to_do(postgres_server):
    closed = f"postgresql://fleet:s3cret@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(FleetStateUnavailable, match=r"connection refused; start PostgreSQL "
                       r".*or leave the fleet URL empty to use SQLite") as e:
        FleetState(closed)
    assert "s3cret" not in str(e.value) and "fleet:***@" in str(e.value)
    with pytest.raises(FleetStateUnavailable, match=r'"nowhere" does not exist; create it'):
        FleetState(postgres_server.url("nowhere"))
    with pytest.raises(FleetStateUnavailable, match="not a PostgreSQL URL"):
        FleetState("mysql://fleet@127.0.0.1/fleet")
    with pytest.raises(FleetStateUnavailable, match="cannot be read"):
        FleetState("postgresql://fleet@127.0.0.1:port/fleet")
    with pytest.raises(FleetStateUnavailable, match="names no database"):
        FleetState(f"postgresql://fleet@127.0.0.1:{postgres_server.port}")


def test_every_process_config_checks_its_fleet_url(tmp_path):
    from vlac.cloud.fleet.publisher import PublisherConfig
    from vlac.cloud.ingest.service import IngestConfig
    from vlac.infra.fleet_cli import FleetConfig

    for cls in (PublisherConfig, IngestConfig, FleetConfig):
        with pytest.raises(ConfigError, match="`fleet_url`: 'sqlite:///x' is not a PostgreSQL"):
            cls(fleet_url="sqlite:///x")
        assert cls(fleet_url="postgresql://u@h:5432/fleet").fleet_url.endswith("/fleet")


# ------------------------------------------------------------------ migrations
def make_old_schema(url: str) -> None:
    with psycopg.connect(url) as c:
        c.execute(OLD_ROBOTS_TABLE)
        c.execute("INSERT INTO robots VALUES('robot-old', 1.0, 2.0, 3, '', 0)")


def test_an_old_schema_gains_the_added_columns_once(pg_url):
    make_old_schema(pg_url)
    fleet = FleetState(pg_url)
    [row] = fleet.robots()
    assert (row["robot_id"], row["running_version"]) == ("robot-old", 3)
    assert (row["announcements_refused"], row["announcements_replayed"]) == (0, 0)
    fleet.robot_seen("robot-old", announcements_refused=7, announcements_replayed=2)
    fleet.close()
    again = FleetState(pg_url)  # opening a migrated database again changes nothing
    [row] = again.robots()
    assert (row["announcements_refused"], row["announcements_replayed"]) == (7, 2)
    again.close()
    cols = robots_columns(pg_url)
    assert cols.count("announcements_refused") == 1 == cols.count("announcements_replayed")


def open_at_once(url: str, name: str, barrier, out) -> None:
    barrier.wait(30)
    try:
        fleet = FleetState(url)
        fleet.robot_seen(name, 1, announcements_refused=1)
        fleet.close()
        out.put((name, "ok"))
    except Exception as e:  # reported to the test, which fails with it
        out.put((name, repr(e)))


@pytest.mark.parametrize("start", ["empty", "old schema"])
def test_processes_opening_at_once_all_succeed(pg_url, start):
    if start == "old schema":
        make_old_schema(pg_url)
    ctx = mp.get_context("spawn")
    names = ["p0", "p1"]
    barrier, out = ctx.Barrier(len(names)), ctx.Queue()
    procs = [ctx.Process(target=open_at_once, args=(pg_url, n, barrier, out)) for n in names]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert results == dict.fromkeys(names, "ok")
    fleet = FleetState(pg_url)
    assert {r["robot_id"] for r in fleet.robots()} >= set(names)
    assert all(r["announcements_refused"] == 1 for r in fleet.robots() if r["robot_id"] in names)
    fleet.close()
    cols = robots_columns(pg_url)
    assert cols.count("announcements_refused") == 1 == cols.count("announcements_replayed")


# ------------------------------------------------------------------ processes on --fleet-url
def test_ingest_heartbeats_and_vlac_fleet_on_a_fleet_url(tmp_path, keyring, pg_url, capsys,
                                                         monkeypatch):
    """Sender -> real ingest (heartbeats into PostgreSQL, no fleet folder) -> `vlac fleet`
    commands through the CLI with --fleet-url."""
    from tests.helpers import ThreadIngest, ingest_config, sender_config
    from vlac.edge.transport.sender import Sender
    from vlac.infra.cli import main as vlac
    from vlac.shared import wire

    monkeypatch.chdir(tmp_path)  # where the default --fleet-dir would be
    icfg = ingest_config(keyring, tmp_path / "store")
    icfg.fleet_url = pg_url
    fleet = FleetState(pg_url)
    fleet.add_version(1, -1, "m1", "a1", 10, "0" * 64)
    with ThreadIngest(icfg) as ingest:
        cfg = sender_config(keyring, "robot-1", ingest.address, tmp_path / "robot-1",
                            heartbeat_s=0.1)
        sender = Sender(cfg, cfg.make_spool(), wire.DEFAULT_SPEC,
                        announcements=lambda: (3, 0)).start()
        try:
            wait_for(lambda: [(r["robot_id"], r["announcements_refused"])
                              for r in fleet.robots()] == [("robot-1", 3)], 10,
                     "robot-1's heartbeat in PostgreSQL")
        finally:
            sender.stop()
    assert vlac(["fleet", "promote", "--fleet-url", pg_url, "--version", "1"]) == 0
    assert fleet.production == 1 and fleet.target("robot-1").version == 1
    assert vlac(["fleet", "status", "--fleet-url", pg_url]) == 0
    assert "robot-1" in capsys.readouterr().out
    assert not (tmp_path / ".cache" / "fleet").exists()  # no SQLite file on the side
    fleet.close()

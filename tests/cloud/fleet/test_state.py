"""Fleet state semantics on both backends: SQLite (a fleet folder) and a real PostgreSQL
server (tests/postgres.py); and writers in several processes at once."""

import itertools
import multiprocessing as mp

import pytest

from vlac.cloud.fleet.state import FleetError, FleetState, in_fraction, open_fleet_state


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request, tmp_path) -> str:
    """Where a fleet state lives: a fleet.db path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "fleet" / "fleet.db")
    return request.getfixturevalue("pg_url")


def add(fleet, *versions):
    for v in versions:
        fleet.add_version(v, v - 1, f"m{v}", f"a{v}", 10, "0" * 64)


def test_versions_promote_rollback_canary_pins_and_restart(where):
    fleet = FleetState(where)
    assert fleet.target("r1") is None and fleet.latest_version() is None
    assert fleet.production is None and fleet.canary is None and fleet.revision == 0
    add(fleet, 1, 2, 3)
    assert [v["version"] for v in fleet.versions()] == [1, 2, 3]
    assert fleet.version(2)["manifest_key"] == "m2" and fleet.latest_version() == 3
    fleet.promote(1)
    fleet.promote(2)
    t = fleet.target("r1")
    assert (t.version, t.reason, t.downgrade) == (2, "production", False)
    fleet.set_group("lab-a", ["r1"])
    assert fleet.group_of("r1") == "lab-a" and fleet.group_of("r2") is None
    fleet.start_canary(3, group="lab-a")
    assert fleet.canary == {"version": 3, "group": "lab-a", "fraction": None}
    assert fleet.target("r1").version == 3 and fleet.target("r2").version == 2
    fleet.pin(1, group="lab-a")
    t = fleet.target("r1")
    assert (t.version, t.reason, t.downgrade) == (1, "pin:lab-a", True)
    fleet.pin(2, robot="r1")  # a robot's own pin wins over its group's
    assert fleet.target("r1").reason == "pin"
    assert fleet.pins() == {("group", "lab-a"): 1, ("robot", "r1"): 2}
    fleet.unpin(robot="r1")
    fleet.unpin(group="lab-a")
    assert fleet.target("r1").version == 3 and fleet.pins() == {}
    fleet.end_canary()
    t = fleet.target("r1")
    assert (t.version, t.downgrade) == (2, True)  # the canary's end is a signed downgrade
    assert fleet.rollback() == 1 and fleet.production == 1
    with pytest.raises(FleetError, match="nothing to roll back"):
        fleet.rollback()
    assert fleet.rollback(to=3) == 3 and fleet.rollback(to=1) == 1
    with pytest.raises(FleetError, match="never published"):
        fleet.promote(9)
    with pytest.raises(FleetError, match="never published"):
        fleet.rollback(to=9)
    with pytest.raises(FleetError, match="already published"):
        add(fleet, 3)
    with pytest.raises(FleetError, match="exactly one"):
        fleet.start_canary(3, group="g", fraction=0.5)
    with pytest.raises(FleetError, match=r"must be in \(0, 1\]"):
        fleet.start_canary(3, fraction=1.5)
    with pytest.raises(FleetError, match="exactly one of --robot"):
        fleet.pin(1)
    revision = fleet.revision
    fleet.close()
    again = FleetState(where)  # state survives restarts
    assert again.production == 1 and again.target("r2").version == 1
    assert again.revision == revision == 15  # one per change, none for refused commands
    assert [e["action"] for e in again.events(4)] == ["rollback", "rollback", "rollback",
                                                      "canary_end"]
    assert again.events(1)[0]["detail"] == {"to": 1, "from": 3}
    assert len(again.events(100)) == 15
    again.close()


def test_fraction_canary_and_group_moves(where):
    fleet = FleetState(where)
    add(fleet, 1, 2)
    fleet.promote(1)
    fleet.start_canary(2, fraction=0.25)
    robots = [f"robot-{i}" for i in range(40)]
    chosen = {r for r in robots if in_fraction(r, 0.25)}
    assert 0 < len(chosen) < 40
    assert {r for r in robots if fleet.target(r).version == 2} == chosen
    assert all(fleet.target(r).reason == "canary" for r in chosen)
    fleet.start_canary(2, group="lab-b")  # a new canary replaces the old one
    fleet.set_group("lab-b", ["robot-0"])
    fleet.set_group("lab-c", ["robot-0"])  # a robot is in one group at a time
    assert fleet.group_of("robot-0") == "lab-c" and fleet.target("robot-0").version == 1
    fleet.promote(2)  # promotion ends the canary
    assert fleet.canary is None and fleet.target("robot-0").version == 2
    fleet.close()


def test_heartbeats_assignments_and_sequence_numbers(where):
    fleet = FleetState(where)
    assert fleet.robots() == [] and fleet.assignments() == {}
    assert fleet.last_assignment("r1") is None
    fleet.robot_seen("r1")
    [row] = fleet.robots()
    assert (row["running_version"], row["update_error"], row["spool_depth"]) == (-1, "", 0)
    assert row["first_seen"] == row["last_seen"] > 1e9  # seconds, at full precision
    fleet.robot_seen("r1", 3, "sha256 does not match", 12, announcements_refused=2,
                     announcements_replayed=1)
    fleet.robot_seen("r1")  # a subscription (no reports) leaves them as they are
    [row] = fleet.robots()
    assert (row["running_version"], row["update_error"], row["spool_depth"],
            row["announcements_refused"], row["announcements_replayed"]) == \
        (3, "sha256 does not match", 12, 2, 1)
    assert row["last_seen"] > row["first_seen"]
    seqs = [fleet.next_seq() for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    blob = bytes(range(256)) * 4  # any bytes, NULs included
    fleet.record_assignment("r1", seqs[0], 3, "production", blob)
    fleet.record_assignment("r1", seqs[1], 4, "pin", blob[::-1])  # replaces the last one
    assert fleet.last_assignment("r1") == (2, 4, blob[::-1])
    a = fleet.assignments()["r1"]
    assert (a["seq"], a["version"], a["reason"]) == (2, 4, "pin")
    fleet.close()
    again = FleetState(where)
    assert again.next_seq() == 6  # sequence numbers continue after a restart
    assert again.last_assignment("r1") == (2, 4, blob[::-1])
    assert again.events() == []  # heartbeats and assignments are not fleet commands
    again.close()


def test_open_fleet_state_picks_sqlite_or_the_url(tmp_path, pg_url):
    local = open_fleet_state(tmp_path / "fleet")
    assert local.where == str(tmp_path / "fleet" / "fleet.db")
    assert (tmp_path / "fleet" / "fleet.db").exists()
    local.close()
    remote = open_fleet_state(tmp_path / "unused", pg_url)
    assert remote.where == pg_url and not (tmp_path / "unused").exists()
    remote.close()
    with pytest.raises(FleetError, match=r"--fleet-dir.*--fleet-url"):
        open_fleet_state(None, "")


# ------------------------------------------------------------------ several processes
N_OPS = 200
EVERY = 20


def write_a_lot(where: str, name: str, barrier, out) -> None:
    """One process: N_OPS sequence numbers, each recorded as an assignment, and a fleet
    command (an audited event) every EVERY of them."""
    fleet = FleetState(where)
    barrier.wait(30)
    seqs = []
    for i in range(N_OPS):
        seq = fleet.next_seq()
        seqs.append(seq)
        fleet.record_assignment(f"{name}-{i % 4}", seq, i, "production", name.encode())
        if i % EVERY == 0:
            fleet.set_group(name, [f"{name}-{i}"])
    fleet.close()
    out.put((name, seqs))


def test_two_processes_write_at_once(where):
    FleetState(where).close()  # the schema exists before the race starts
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=write_a_lot, args=(where, n, barrier, out)) for n in "ab"]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    everything = results["a"] + results["b"]
    assert sorted(everything) == list(range(1, 2 * N_OPS + 1))  # unique, none skipped
    for seqs in results.values():
        assert all(x < y for x, y in itertools.pairwise(seqs))  # strictly increasing per process
    interleaved = sum(x + 1 != y for x, y in itertools.pairwise(results["a"]))
    fleet = FleetState(where)
    events = fleet.events(1000)
    assert len(events) == 2 * N_OPS // EVERY == fleet.revision
    assert sorted(e["detail"]["robots"][0] for e in events) == sorted(
        f"{n}-{i}" for n in "ab" for i in range(0, N_OPS, EVERY))
    last = fleet.assignments()
    assert {r: a["seq"] for r, a in last.items()} == {
        f"{n}-{k}": max(s for i, s in enumerate(results[n]) if i % 4 == k)
        for n in "ab" for k in range(4)}
    fleet.close()
    if not where.endswith(".db"):  # PostgreSQL's lock queue is fair; SQLite's busy wait is not
        assert interleaved > 0, "the two writers never overlapped; the test proved nothing"

"""`vlac fleet ...`: what the fleet runs, and the decisions about what it should run.

Every command works on the fleet state (``--fleet-dir``/fleet.db, or PostgreSQL at
``--fleet-url postgresql://USER@HOST:PORT/DATABASE``), which the publisher's
announcer polls: a decision made here reaches the robots within ``poll_s`` (signed by the
announcer, applied by each robot's updater between episodes). State survives restarts.

    vlac fleet status                      robots, running/target version, last seen, errors,
                                           recent success rate (from --store-root), weight
                                           announcements refused/replayed (red when not 0:
                                           an attack or a misconfigured publisher)
    vlac fleet versions                    published versions; production / canary marked
    vlac fleet promote --version 7         production for every robot not pinned
    vlac fleet rollback [--to 5]           production back to the previous (or given) version
    vlac fleet canary --version 8 --group lab-a | --fraction 0.1    [--end]
    vlac fleet pin --version 6 --robot robot-3 | --group lab-a      [--unpin]
    vlac fleet group --name lab-a --robots robot-0,robot-1
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlac.cloud.fleet.state import URL_HELP, FleetState, check_fleet_url, open_fleet_state
from vlac.shared.config import check, check_id, opt


@dataclass
class FleetConfig:
    fleet_dir: Path = opt(Path(".cache/fleet"), "Fleet state folder (fleet.db).")
    fleet_url: str = opt("", URL_HELP)
    store_root: Path | str | None = opt(None, "Episode store, for recent success rates "
                                        "(status): a folder or s3://BUCKET/PREFIX?endpoint=URL.")
    recent: int = opt(20, "Episodes per robot in the recent success rate.")
    version: int | None = opt(None, "Version to promote / canary / pin.")
    to: int | None = opt(None, "Rollback target (default: the previous production version).")
    robot: str | None = opt(None, "Robot to pin.")
    group: str | None = opt(None, "Group to pin or canary.")
    fraction: float | None = opt(None, "Canary fraction of robots (0, 1].")
    name: str = opt("", "Group name (fleet group).")
    robots: list[str] = opt([], "Robots of the group (fleet group).")
    end: bool = opt(False, "End the canary (fleet canary).")
    unpin: bool = opt(False, "Remove the pin instead (fleet pin).")

    def __post_init__(self) -> None:
        self.fleet_dir = Path(self.fleet_dir)
        check_fleet_url(self.fleet_url)
        if self.store_root is not None:
            from vlac.cloud.store.location import store_location

            self.store_root = store_location(self.store_root)
        for field_name in ("robot", "group"):
            value = getattr(self, field_name)
            if value is not None:
                check_id(value, field_name)
        for r in self.robots:
            check_id(r, "robots")

    def state(self) -> FleetState:
        if not self.fleet_url:
            check((self.fleet_dir / "fleet.db").exists(), "fleet_dir",
                  f"no fleet state in {self.fleet_dir} (no fleet.db): pass the --fleet-dir "
                  "(or --fleet-url) of `vlac publisher serve`")
        return open_fleet_state(self.fleet_dir, self.fleet_url)

    def need_version(self) -> int:
        check(self.version is not None, "version", "give --version N (see `vlac fleet "
              "versions`)")
        return int(self.version)  # type: ignore[arg-type]


def _ago(t: float | None) -> str:
    if not t:
        return "never"
    s = time.time() - t
    return f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else \
        f"{s / 3600:.1f}h ago"


def recent_success(store_root: Path | str, n: int) -> dict[str, tuple[int, int]]:
    from vlac.cloud.store.location import open_episode_store

    out: dict[str, list[bool]] = {}
    for e in open_episode_store(store_root, read_only=True).list_episodes():
        if e.get("source", "policy") != "demo":
            out.setdefault(e["robot_id"], []).append(bool(e.get("success")))
    return {r: (sum(v[-n:]), len(v[-n:])) for r, v in out.items()}


def _announcement_counts(refused: int, replayed: int) -> str:
    """``refused/replayed``, nonzero counts in red (someone sends junk or replays)."""
    return "/".join(f"[bold red]{n}[/]" if n else "0" for n in (refused, replayed))


def status_main(cfg: FleetConfig, console: Console | None = None) -> list[dict]:
    fleet = cfg.state()
    success = recent_success(cfg.store_root, cfg.recent) if cfg.store_root else {}
    assigned = fleet.assignments()
    rows = []
    table = Table(title=f"fleet: production v{fleet.production}"
                  + (f", canary v{fleet.canary['version']}" if fleet.canary else ""))
    for col in ("robot", "group", "running", "target", "last seen", "recent success",
                "announcements\nrefused/replayed", "update error"):
        table.add_column(col)
    for r in fleet.robots():
        target = fleet.target(r["robot_id"])
        ok, n = success.get(r["robot_id"], (0, 0))
        row = {**r, "group": fleet.group_of(r["robot_id"]),
               "target": None if target is None else target.version,
               "reason": None if target is None else target.reason,
               "announced_seq": assigned.get(r["robot_id"], {}).get("seq"),
               "recent_success": ok / n if n else None}
        rows.append(row)
        running = "-" if r["running_version"] < 0 else f"v{r['running_version']}"
        table.add_row(r["robot_id"], row["group"] or "", running,
                      "-" if target is None else f"v{target.version} ({target.reason})",
                      _ago(r["last_seen"]), f"{ok}/{n}" if n else "-",
                      _announcement_counts(r["announcements_refused"] or 0,
                                           r["announcements_replayed"] or 0),
                      r["update_error"] or "")
    (console or Console()).print(table)
    if any(r["announcements_refused"] or r["announcements_replayed"] for r in rows):
        (console or Console()).print(
            "[bold red]some robots refused or saw replayed weight announcements[/]: someone "
            "may be sending junk to the announcement port, or a publisher signs with another "
            "key or replays old assignments; see those robots' logs")
    return rows


def versions_main(cfg: FleetConfig) -> list[dict]:
    fleet = cfg.state()
    running: dict[int, int] = {}
    for r in fleet.robots():
        running[r["running_version"]] = running.get(r["running_version"], 0) + 1
    canary = fleet.canary or {}
    table = Table(title="published versions")
    for col in ("version", "parent", "size", "sha256", "published", "role", "robots running"):
        table.add_column(col)
    out = []
    for v in fleet.versions():
        role = "production" if v["version"] == fleet.production else \
            "canary" if v["version"] == canary.get("version") else ""
        out.append({**v, "role": role, "robots": running.get(v["version"], 0)})
        table.add_row(f"v{v['version']}", str(v["parent"]), f"{v['size'] / 1e6:.2f} MB",
                      v["sha256"][:12], _ago(v["created_at"]), role,
                      str(running.get(v["version"], 0)))
    Console().print(table)
    return out


def promote_main(cfg: FleetConfig) -> None:
    version = cfg.need_version()
    cfg.state().promote(version)
    print(f"production is now v{version}")


def rollback_main(cfg: FleetConfig) -> None:
    to = cfg.state().rollback(cfg.to)
    print(f"rolled back: production is now v{to} (robots get it as a signed downgrade)")


def canary_main(cfg: FleetConfig) -> None:
    if cfg.end:
        cfg.state().end_canary()
        print("canary ended: canary robots return to production")
        return
    version = cfg.need_version()
    cfg.state().start_canary(version, group=cfg.group, fraction=cfg.fraction)
    who = f"group {cfg.group}" if cfg.group else f"{cfg.fraction:.0%} of robots"
    print(f"canary v{version} on {who}")


def pin_main(cfg: FleetConfig) -> None:
    if cfg.unpin:
        cfg.state().unpin(robot=cfg.robot, group=cfg.group)
        print(f"unpinned {cfg.robot or cfg.group}")
        return
    version = cfg.need_version()
    cfg.state().pin(version, robot=cfg.robot, group=cfg.group)
    print(f"pinned {cfg.robot or cfg.group} to v{version}")


def group_main(cfg: FleetConfig) -> None:
    check_id(cfg.name, "name")
    check(bool(cfg.robots), "robots", "list the group's robots: --robots robot-0,robot-1")
    cfg.state().set_group(cfg.name, cfg.robots)
    print(f"group {cfg.name}: {', '.join(cfg.robots)}")


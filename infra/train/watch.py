"""`vlac train`'s live line while the RL loop runs: episodes, success, policy versions and
rewards, until the episodes are done, the time is up, Ctrl-C, or a service fails."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from vlac.infra.train.config import Paths, TrainConfig
from vlac.infra.train.launch import Launcher
from vlac.infra.train.logs import JobConsole
from vlac.infra.train.processes import SERVICES


def policy_episodes(store_root: Path) -> list[dict]:
    """The robots' episodes (not the demonstrations), in completion order."""
    from vlac.cloud.store.episodes import EpisodeStore

    if not (store_root / "episodes").exists():
        return []
    eps = [e for e in EpisodeStore(store_root, read_only=True).list_episodes()
           if e.get("source") != "demo"]
    return sorted(eps, key=lambda e: e["completed_at"])


def mean_return(learner_log: Path) -> str:
    """The learner's last mean return, for the live line ('' before its first update)."""
    if not learner_log.exists():
        return ""
    try:
        rows = json.loads(learner_log.read_text())["log"]
    except (ValueError, KeyError):
        return ""  # being rewritten
    return f", mean return {rows[-1].get('return_mean', float('nan')):.2f}" if rows else ""


def status_line(cfg: TrainConfig, p: Paths, fleet, eps: list[dict], t0: float) -> str:
    wins = [e["outcome"]["success"] for e in eps[-20:]]
    running = sorted({r["running_version"] for r in fleet.robots()})
    versions = fleet.versions()
    # the live line counts an episode the operator finished as a success; the report does not
    helped = ", operator's finishes included" if cfg.hitl.helped else ""
    return (f"[bold]{len(eps)}/{cfg.episodes}[/] episodes, success (last 20{helped}) "
            f"{np.mean(wins) if wins else 0:.0%}, published v"
            f"{versions[-1]['version'] if versions else '-'}, robots run {running}"
            f"{mean_return(p.learner / 'learner_log.json')}, {time.time() - t0:.0f}s")


def watch(cfg: TrainConfig, p: Paths, launcher: Launcher, stop: threading.Event,
          jc: JobConsole, t0: float) -> None:
    from rich.live import Live

    from vlac.cloud.fleet.state import open_fleet_state

    fleet = open_fleet_state(p.fleet)
    robots = [n for n in launcher.procs if n.startswith("robot")]
    try:
        with Live(console=jc.console, refresh_per_second=1, transient=False,
                  redirect_stdout=jc.verbose, redirect_stderr=jc.verbose) as live:
            while not stop.is_set():
                eps = policy_episodes(p.store)
                live.update(status_line(cfg, p, fleet, eps, t0))
                robots_done = not any(launcher.alive(r) for r in robots)
                if robots_done and (not launcher.alive("learner") or len(eps) >= cfg.episodes):
                    break
                if launcher.failed(SERVICES):
                    bad = launcher.failed()
                    raise RuntimeError(f"{bad} stopped with an error ({launcher.where(bad)}); "
                                       "rerun `vlac train` to resume")
                if cfg.timeout_s and time.time() - t0 > cfg.timeout_s:
                    jc.console.print(f"timeout after {cfg.timeout_s:.0f}s; stopping")
                    break
                stop.wait(2.0)
            if robots and not any(launcher.alive(r) for r in robots) and \
                    "learner" in launcher.procs:
                launcher.procs["learner"].join(120)  # let it consume the last episodes
        if not jc.console.is_terminal:
            jc.console.line()  # off a terminal the last live line ends without one
    finally:
        fleet.close()

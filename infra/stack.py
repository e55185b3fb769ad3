"""The local stack, the README's main job: an ingest process and a fleet of simulated robots
(Meta-World, one process each, each with its own task and seed) streaming over loopback
ZeroMQ with CURVE keys made on first run, then a table of what the store holds. Every part
runs as its own process (spawn, on the launcher `vlac train` uses: ``vlac.infra.train.launch``),
as it would across machines, and prints to this console. ``--robot synthetic`` swaps the
simulator for synthetic frames (transport only); ``--operator.takeover-prob`` lets the
simulated operator take over at random (the operator section of `vlac edge run`)."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from vlac.infra.train.launch import Launcher
from vlac.shared import keys
from vlac.shared.config import check, describe, opt
from vlac.shared.hitl import OperatorConfig
from vlac.shared.net import free_port

log = logging.getLogger(__name__)


@dataclass
class StackConfig:
    workdir: Path = opt(Path(".cache/stack"), "Folder for keys, spools and the store.")
    robot: Literal["metaworld", "synthetic"] = opt("metaworld", "Simulated robots, or "
                                                   "synthetic frames (transport only).")
    robots: int = opt(4, "Number of robot processes.")
    tasks: list[str] = opt(["push-v3", "drawer-open-v3", "button-press-v3", "pick-place-v3"],
                           "Meta-World tasks, assigned to robots in turn.")
    policy_noise: float = opt(0.3, "Action noise of the robots' scripted policy.")
    operator: OperatorConfig = field(default_factory=OperatorConfig, metadata={
        "help": "The simulated operator of the Meta-World robots (random takeovers; the "
                "stack runs no critic, so on_stall stays none)."})
    max_steps: int = opt(150, "Step limit of a Meta-World episode.")
    episodes_per_robot: int = opt(3, "Episodes each robot streams.")
    steps_per_episode: int = opt(64, "Steps per episode (synthetic robots only).")
    chunk_steps: int = opt(16, "Steps per chunk on the wire.")
    step_hz: float = opt(0.0, "Robot control rate (0: as fast as possible).")
    port: int = opt(0, "Ingest TCP port on 127.0.0.1 (0: pick a free one).")
    timeout_s: float = opt(300.0, "Give up if the fleet has not finished by then.")

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        check(1 <= self.robots <= 256, "robots", "use 1 to 256 robots")
        check(self.episodes_per_robot >= 1, "episodes_per_robot", "must be >= 1")
        check(0 <= self.port < 65536, "port", "must be a TCP port number or 0")
        check(len(self.tasks) > 0, "tasks", "name at least one Meta-World task")
        check(self.operator.on_stall == "none", "operator.on_stall",
              "needs the critic service, which the stack does not run: use `vlac train`")


def robot_config(cfg: StackConfig, i: int, address: str, kdir: Path):
    """Robot ``i``: a Meta-World robot on task ``i`` (in turn) with the scripted policy, or
    synthetic frames."""
    from vlac.edge.process import EdgeAgentConfig
    from vlac.edge.robots.metaworld import MetaWorldRobotConfig
    from vlac.edge.transport.sender import SenderConfig
    from vlac.edge.transport.stream import SyntheticStreamConfig

    name = f"robot-{i}"
    sender = SenderConfig(robot_id=name, ingest_address=address,
                          robot_secret_key=kdir / f"robots/{name}.key_secret",
                          server_public_key=kdir / "server/ingest.key",
                          spool_dir=cfg.workdir / "spool" / name)
    if cfg.robot == "synthetic":
        return SyntheticStreamConfig(
            sender=sender, episodes=cfg.episodes_per_robot,
            steps_per_episode=cfg.steps_per_episode, chunk_steps=cfg.chunk_steps,
            seed=i, step_hz=cfg.step_hz, quiet=True,
            task=["push the puck to the goal", "open the drawer",
                  "press the button", "pick up the block and place it"][i % 4])
    return EdgeAgentConfig(
        sender=sender, robot=MetaWorldRobotConfig(task=cfg.tasks[i % len(cfg.tasks)],
                                                  seed=1000 + i, max_steps=cfg.max_steps),
        policy_noise=cfg.policy_noise, operator=cfg.operator,
        episodes=cfg.episodes_per_robot, chunk_steps=cfg.chunk_steps,
        step_hz=cfg.step_hz, quiet=True)


def main(cfg: StackConfig) -> dict:
    from vlac.cloud.ingest.service import IngestConfig
    from vlac.cloud.store.cli import StoreLsConfig, ls_main

    console = Console(width=120)
    console.print(describe(cfg))
    names = [f"robot-{i}" for i in range(cfg.robots)]
    kdir = cfg.workdir / "keys"
    keys.generate(kdir, names)
    address = f"tcp://127.0.0.1:{cfg.port or free_port()}"
    ingest_cfg = IngestConfig(bind=address, store_root=cfg.workdir / "store",
                              server_secret_key=kdir / "server/ingest.key_secret",
                              allowed_keys_dir=kdir / "robots", status_every_s=5.0)
    launcher = Launcher()  # every process prints to this console
    launcher.start("ingest", "vlac.cloud.ingest.service:main", ingest_cfg, level=logging.INFO)
    t0 = time.monotonic()
    try:
        for i, name in enumerate(names):
            rcfg = robot_config(cfg, i, address, kdir)
            target = "vlac.edge.transport.stream:main" if cfg.robot == "synthetic" else \
                "vlac.edge.process:main"
            # gymnasium's env checker nags about Meta-World's spaces
            launcher.start(name, target, rcfg, ignore_warnings=True)
        console.print(f"ingest on {address}; {len(names)} robots streaming ...")
        deadline = t0 + cfg.timeout_s
        for name in names:
            launcher.procs[name].join(max(0.1, deadline - time.monotonic()))
        failed = [n for n in names if launcher.procs[n].exitcode != 0]
        if failed:
            raise RuntimeError(f"robots {failed} did not finish cleanly ({launcher.where(failed)}"
                               f"); their unsent chunks stay in {cfg.workdir / 'spool'}")
    finally:
        launcher.stop([*names, "ingest"], timeout=10)  # SIGTERM: ingest stops between messages
    seconds = time.monotonic() - t0
    eps = ls_main(StoreLsConfig(root=ingest_cfg.store_root), console)
    summary(console, eps, cfg.robots, seconds)
    return {"episodes": len(eps), "steps": sum(e["n_steps"] for e in eps), "seconds": seconds,
            **dataclasses.asdict(cfg)}


def summary(console: Console, eps: list[dict], robots: int, seconds: float) -> None:
    steps = sum(e["n_steps"] for e in eps)
    by_task: dict[str, list[bool]] = {}
    for e in eps:
        by_task.setdefault(e.get("task_id") or e["task"], []).append(e["outcome"]["success"])
    table = Table(title="success by task")
    for col in ("task", "episodes", "success"):
        table.add_column(col)
    for task, wins in sorted(by_task.items()):
        table.add_row(task, str(len(wins)), f"{sum(wins) / len(wins):.0%}")
    console.print(table)
    console.print(f"{len(eps)} episodes, {steps} steps from {robots} robots in "
                  f"{seconds:.1f}s ({steps / seconds:.0f} steps/s with rendering, including "
                  "process start-up)")

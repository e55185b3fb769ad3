"""The local stack, the README's main job: an ingest process and a fleet of simulated robots
(Meta-World, one process each, each with its own task and seed) streaming over loopback
ZeroMQ with CURVE keys made on first run, then a table of what the store holds. Every part
runs as its own process (spawn), as it would across machines. ``--robot synthetic`` swaps the
simulator for synthetic frames (transport only)."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.table import Table

from vlac.shared import keys
from vlac.shared.config import check, describe, opt
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
    takeover_prob: float = opt(0.0, "Per-step chance that the simulated operator takes over.")
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


def _run_ingest(cfg) -> None:  # in a child process
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    from vlac.cloud.ingest.service import main
    main(cfg)


def _run_robot(cfg) -> None:  # in a child process
    logging.basicConfig(level=logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")  # gymnasium's env checker nags about Meta-World spaces
    if type(cfg).__name__ == "EdgeAgentConfig":
        from vlac.edge.process import main
    else:
        from vlac.edge.transport.stream import main
    main(cfg)


def main(cfg: StackConfig) -> dict:
    from vlac.cloud.ingest.service import IngestConfig
    from vlac.cloud.store.cli import StoreLsConfig, ls_main
    from vlac.edge.process import EdgeAgentConfig
    from vlac.edge.robots.metaworld import MetaWorldRobotConfig
    from vlac.edge.transport.sender import SenderConfig
    from vlac.edge.transport.stream import SyntheticStreamConfig

    console = Console(width=120)
    console.print(describe(cfg))
    names = [f"robot-{i}" for i in range(cfg.robots)]
    kdir = cfg.workdir / "keys"
    keys.generate(kdir, names)
    port = cfg.port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    ingest_cfg = IngestConfig(bind=address, store_root=cfg.workdir / "store",
                              server_secret_key=kdir / "server/ingest.key_secret",
                              allowed_keys_dir=kdir / "robots", status_every_s=5.0)
    ctx = mp.get_context("spawn")
    ingest = ctx.Process(target=_run_ingest, args=(ingest_cfg,), name="ingest")
    ingest.start()
    robots = []
    t0 = time.monotonic()
    try:
        for i, name in enumerate(names):
            sender = SenderConfig(robot_id=name, ingest_address=address,
                                  robot_secret_key=kdir / f"robots/{name}.key_secret",
                                  server_public_key=kdir / "server/ingest.key",
                                  spool_dir=cfg.workdir / "spool" / name)
            if cfg.robot == "synthetic":
                rcfg = SyntheticStreamConfig(
                    sender=sender, episodes=cfg.episodes_per_robot,
                    steps_per_episode=cfg.steps_per_episode, chunk_steps=cfg.chunk_steps,
                    seed=i, step_hz=cfg.step_hz, quiet=True,
                    task=["push the puck to the goal", "open the drawer",
                          "press the button", "pick up the block and place it"][i % 4])
            else:
                task = cfg.tasks[i % len(cfg.tasks)]
                rcfg = EdgeAgentConfig(
                    sender=sender, robot=MetaWorldRobotConfig(task=task, seed=1000 + i,
                                                              max_steps=cfg.max_steps),
                    policy_noise=cfg.policy_noise, takeover_prob=cfg.takeover_prob,
                    episodes=cfg.episodes_per_robot, chunk_steps=cfg.chunk_steps,
                    step_hz=cfg.step_hz, quiet=True)
            p = ctx.Process(target=_run_robot, args=(rcfg,), name=name)
            p.start()
            robots.append(p)
        console.print(f"ingest on {address}; {len(robots)} robots streaming ...")
        deadline = t0 + cfg.timeout_s
        for p in robots:
            p.join(max(0.1, deadline - time.monotonic()))
        failed = [p.name for p in robots if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"robots {failed} did not finish cleanly (see their errors "
                               f"above); their unsent chunks stay in {cfg.workdir / 'spool'}")
    finally:
        for p in robots:
            if p.is_alive():
                p.terminate()
        if ingest.is_alive():
            ingest.terminate()  # SIGTERM: ingest stops between messages
        ingest.join(10)
    seconds = time.monotonic() - t0
    eps = ls_main(StoreLsConfig(root=ingest_cfg.store_root), console)
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
    console.print(f"{len(eps)} episodes, {steps} steps from {cfg.robots} robots in "
                  f"{seconds:.1f}s ({steps / seconds:.0f} steps/s with rendering, including "
                  "process start-up)")
    return {"episodes": len(eps), "steps": steps, "seconds": seconds,
            **dataclasses.asdict(cfg)}

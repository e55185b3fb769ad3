"""`vlac demos collect`: scripted-expert demonstrations from Meta-World into the episode store.

The expert acts through the same operator interface a person would use (every step is an
operator takeover, so steps are marked ``intervention=True``); ``noise`` perturbs its actions
so demonstrations are diverse and some fail (the critic needs failures too). With
``stop_after`` the expert gives up part-way and the arm holds still until the step limit:
failures that made some progress, the ones a critic must tell from a success by its final
progress. Episode ids are
derived from (task, seed, index), so running the same collection twice stores nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vlac.shared.config import check, describe, opt
from vlac.shared.episode import StepColumns, concat_steps


@dataclass
class DemosCollectConfig:
    tasks: list[str] = opt(["push-v3", "drawer-open-v3"], "Meta-World tasks, comma-separated.")
    episodes: int = opt(10, "Episodes per task.")
    noise: float = opt(0.1, "Std of Gaussian noise on the expert's actions (0: clean).")
    store_root: Path | str = opt(Path(".cache/store"), "Episode store to write into: a folder "
                                 "or s3://BUCKET/PREFIX?endpoint=URL.")
    camera: str = opt("corner", "Camera to record.")
    image_size: int = opt(128, "Square image size in pixels.")
    max_steps: int = opt(150, "Step limit per episode.")
    hide_goal: bool = opt(False, "Hide Meta-World's goal marker.")
    stop_after: int = opt(0, "0: the expert acts to the end; N > 0: it acts for a random "
                          "number of steps in [N/4, N] and the arm then holds still until "
                          "--max-steps (most such episodes fail part-way).")
    seed: int = opt(0, "Seed: layouts, instructions and noise.")
    robot_id: str = opt("sim-demo", "Robot id the demonstrations are stored under.")

    def __post_init__(self) -> None:
        from vlac.cloud.store.location import store_location
        from vlac.shared.config import check_id

        self.store_root = store_location(self.store_root)
        check(len(self.tasks) > 0, "tasks", "name at least one task, e.g. push-v3")
        check(self.episodes >= 1, "episodes", "must be >= 1")
        check(self.noise >= 0, "noise", "must be >= 0")
        check(self.stop_after >= 0, "stop_after", "must be >= 0 (0: the expert finishes)")
        check_id(self.robot_id, "robot_id")


class _HoldStill:
    """The policy once a stopping expert has given up: the zero action (the arm stays put)."""

    version = -1

    def __init__(self, spec) -> None:
        from vlac.shared.tokenizer import ActionTokenizer

        tok = ActionTokenizer(spec.action_low, spec.action_high, spec.action_bins)
        self.tokens = tok.encode(np.zeros(tok.dim, np.float32))
        self.action = tok.decode(self.tokens)

    def act(self, obs):
        from vlac.edge.policy import PolicyStep

        return PolicyStep(self.action, self.tokens, 0.0, self.version)


def _stopping_expert(task: str, cfg: DemosCollectConfig, seed: int):
    """A scripted expert that acts for a random number of steps in [N/4, N] of each
    episode (``stop_after`` N), then lets go."""
    from vlac.edge.hitl.operator import ScriptedExpert

    class StoppingExpert(ScriptedExpert):
        def on_episode_start(self, task: str) -> None:
            n = cfg.stop_after
            self.engage(int(self._rng.integers(max(1, n // 4), n + 1)))

    return StoppingExpert(task, noise=cfg.noise, seed=seed)


class _Collect:
    """Episode sink that keeps the steps in memory; the episode is stored when it ends."""

    def __init__(self) -> None:
        self.parts: list[StepColumns] = []
        self.outcome: tuple[bool, str] | None = None

    def add(self, steps: StepColumns) -> None:
        self.parts.append(steps)

    def end(self, success: bool, reason: str = "") -> None:
        self.outcome = (success, reason)


def main(cfg: DemosCollectConfig) -> dict[str, dict]:
    from vlac.cloud.store.location import open_episode_store
    from vlac.edge.agent import run_episode
    from vlac.edge.hitl.operator import ScriptedExpert
    from vlac.edge.policy import RandomPolicy
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig, task_names

    console = Console(width=110)
    console.print(describe(cfg))
    known = set(task_names())
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        from vlac.shared.config import ConfigError

        raise ConfigError(f"config field `tasks`: unknown Meta-World task(s) {unknown}; "
                          f"e.g. {sorted(known)[:6]}")
    store = open_episode_store(cfg.store_root)
    results: dict[str, dict] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for ti, task in enumerate(cfg.tasks):
            bar = progress.add_task(f"{task:>22}", total=cfg.episodes)
            rcfg = MetaWorldRobotConfig(task=task, camera=cfg.camera, image_size=cfg.image_size,
                                        seed=cfg.seed * 1000 + ti, max_steps=cfg.max_steps,
                                        hide_goal=cfg.hide_goal)
            lengths, successes, new = [], [], 0
            with MetaWorldRobot(rcfg) as robot:
                if cfg.stop_after:
                    expert = _stopping_expert(task, cfg, cfg.seed * 1000 + ti)
                    policy = _HoldStill(robot.spec)
                else:
                    expert = ScriptedExpert(task, always=True, noise=cfg.noise,
                                            seed=cfg.seed * 1000 + ti)
                    policy = RandomPolicy(robot.spec, version=-1)  # never asked
                for i in range(cfg.episodes):
                    sink = _Collect()
                    res = run_episode(robot, policy, lambda _t, s=sink: s, operator=expert)
                    kind = f"stop{cfg.stop_after}-" if cfg.stop_after else ""
                    ep_id = f"demo-{task}-{kind}s{cfg.seed}-{i:05d}"
                    if not store.has(cfg.robot_id, ep_id, 0):
                        store.write_episode(cfg.robot_id, ep_id, res.task,
                                            concat_steps(sink.parts), res.success, res.reason,
                                            source="demo", task_id=task)
                        new += 1
                    lengths.append(res.steps)
                    successes.append(res.success)
                    progress.advance(bar)
            results[task] = {"episodes": cfg.episodes, "stored": new,
                             "success_rate": float(np.mean(successes)),
                             "mean_len": float(np.mean(lengths)), "min_len": min(lengths),
                             "max_len": max(lengths)}
    stop = f", the expert stops within {cfg.stop_after} steps" if cfg.stop_after else ""
    table = Table(title=f"demonstrations in {cfg.store_root} (noise {cfg.noise}{stop})")
    for col in ("task", "episodes", "new", "success", "mean len", "min", "max"):
        table.add_column(col)
    for task, r in results.items():
        table.add_row(task, str(r["episodes"]), str(r["stored"]), f"{r['success_rate']:.0%}",
                      f"{r['mean_len']:.1f}", str(r["min_len"]), str(r["max_len"]))
    console.print(table)
    return results

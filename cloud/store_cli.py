"""`vlac store ls` and `vlac store show`: what the episode store holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vlac.cloud.store import EpisodeStore
from vlac.shared.config import ConfigError, opt


@dataclass
class StoreLsConfig:
    root: Path = opt(Path(".cache/store"), "Root folder of the episode store.")
    incomplete: bool = opt(False, "Also list episodes still missing chunks.")

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not (self.root / "episodes").is_dir():
            raise ConfigError(f"config field `root`: {self.root} is not an episode store "
                              "(no episodes/ folder); pass --root of `vlac ingest serve`")


@dataclass
class StoreShowConfig:
    episode: str = opt("", "ROBOT/EPISODE to show (as listed by `vlac store ls`).")
    root: Path = opt(Path(".cache/store"), "Root folder of the episode store.")
    steps: int = opt(10, "How many steps to print.")

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if self.episode.count("/") != 1:
            raise ConfigError("config field `episode`: give ROBOT/EPISODE, e.g. "
                              "--episode robot-0/robot-0-1a2b3c")


def ls_main(cfg: StoreLsConfig, console: Console | None = None) -> list[dict]:
    console = console or Console(width=120)
    store = EpisodeStore(cfg.root)
    eps = store.list_episodes()
    table = Table(title=f"episodes in {cfg.root}")
    for col in ("robot/episode", "task", "instruction", "source", "steps", "success", "MB"):
        table.add_column(col, no_wrap=col != "instruction")
    for e in eps:
        table.add_row(f"{e['robot_id']}/{e['episode_id']}", e.get("task_id", ""),
                      e["task"][:40], e.get("source", ""), str(e["n_steps"]),
                      "yes" if e["outcome"]["success"] else "no",
                      f"{e['bytes'] / 1e6:.2f}")
    console.print(table)
    s = store.stats()
    console.print(f"{s['episodes']} episodes, {s['steps']} steps, {s['robots']} robots, "
                  f"{s['bytes'] / 1e6:.1f} MB, {s['incomplete']} incomplete")
    if cfg.incomplete:
        for inc in store.incomplete():
            console.print(f"incomplete: {inc['robot_id']}/{inc['episode_id']} chunks "
                          f"{inc['chunks']} final_seen={inc['final_seen']}")
    return eps


def show_main(cfg: StoreShowConfig, console: Console | None = None) -> None:
    console = console or Console(width=120)
    robot, episode = cfg.episode.split("/")
    ep = EpisodeStore(cfg.root).load_episode(robot, episode)
    console.print(f"[bold]{robot}/{episode}[/]: {ep.task!r}, {len(ep)} steps, "
                  f"outcome {ep.outcome}")
    for cam, frames in ep.steps.images.items():
        console.print(f"camera {cam}: {frames.shape} uint8, mean {frames.mean():.1f}")
    table = Table()
    for col in ("step", "t", "proprio", "action", "tokens", "logprob", "version", "operator"):
        table.add_column(col)
    s = ep.steps
    for i in range(min(cfg.steps, len(ep))):
        table.add_row(str(i), f"{s.timestamp[i] - s.timestamp[0]:.2f}",
                      np.array2string(s.proprio[i], precision=2),
                      np.array2string(s.action[i], precision=2), str(s.action_tokens[i].tolist()),
                      f"{s.logprob[i]:.2f}", str(s.policy_version[i]),
                      "yes" if s.intervention[i] else "")
    console.print(table)

"""`vlac store ls` and `vlac store show`: what the episode store holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vlac.cloud.store.base import StoreBusy
from vlac.cloud.store.location import open_episode_store, store_location
from vlac.shared.config import ConfigError, opt, parse_duration

ROOT_HELP = "The episode store: a folder or s3://BUCKET/PREFIX?endpoint=URL."


@dataclass
class StoreLsConfig:
    root: Path | str = opt(Path(".cache/store"), ROOT_HELP)
    incomplete: bool = opt(False, "Also list episodes still missing chunks.")

    def __post_init__(self) -> None:
        self.root = _store_root(self.root)


@dataclass
class StoreGcConfig:
    older_than: str = opt("24h", "Drop episodes that stayed incomplete this long since their "
                          "last chunk: seconds, or a number with s, m, h or d.")
    root: Path | str = opt(Path(".cache/store"), ROOT_HELP)
    dry_run: bool = opt(False, "Only list what would be dropped.")

    def __post_init__(self) -> None:
        self.root = _store_root(self.root)
        self.older_than_s = parse_duration(self.older_than, "older_than")


def _store_root(root: Path | str) -> Path | str:
    root = store_location(root, "root")
    if isinstance(root, Path) and not (root / "episodes").is_dir():
        raise ConfigError(f"config field `root`: {root} is not an episode store "
                          "(no episodes/ folder); pass --root of `vlac ingest serve`")
    return root


@dataclass
class StoreShowConfig:
    episode: str = opt("", "ROBOT/EPISODE to show (as listed by `vlac store ls`).")
    root: Path | str = opt(Path(".cache/store"), ROOT_HELP)
    steps: int = opt(10, "How many steps to print.")

    def __post_init__(self) -> None:
        self.root = store_location(self.root, "root")
        if self.episode.count("/") != 1:
            raise ConfigError("config field `episode`: give ROBOT/EPISODE, e.g. "
                              "--episode robot-0/robot-0-1a2b3c")


def ls_main(cfg: StoreLsConfig, console: Console | None = None) -> list[dict]:
    console = console or Console(width=120)
    store = open_episode_store(cfg.root, read_only=True)  # beside a running ingest
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
        console.print(_incomplete_table(store.incomplete(),
                                        f"incomplete episodes in {cfg.root}"))
    return eps


def gc_main(cfg: StoreGcConfig, console: Console | None = None) -> list[dict]:
    """Drop what stayed incomplete in staging for ``--older-than``; complete episodes are
    never touched. Refused while an ingest writes to the store (it collects by itself)."""
    console = console or Console(width=120)
    store = open_episode_store(cfg.root)
    try:
        with store.writer_lock(exclusive=True):
            if cfg.dry_run:
                dropped = [i for i in store.incomplete() if i["age_s"] >= cfg.older_than_s]
            else:
                dropped = store.collect_staging(cfg.older_than_s)
    except StoreBusy as e:
        raise ConfigError(f"config field `root`: {e}") from None
    verb = "would drop" if cfg.dry_run else "dropped"
    if dropped:
        console.print(_incomplete_table(dropped, f"{verb} (incomplete for {cfg.older_than})"))
    console.print(f"{verb} {len(dropped)} incomplete episodes "
                  f"({sum(i['bytes'] for i in dropped) / 1e6:.1f} MB); "
                  f"{len(store.incomplete())} still arriving")
    return dropped


def _incomplete_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("robot/episode", "task", "chunks", "final", "age", "MB"):
        table.add_column(col, no_wrap=True)
    for i in rows:
        table.add_row(f"{i['robot_id']}/{i['episode_id']}", i["task"][:40],
                      _ranges(i["chunks"]), "yes" if i["final_seen"] else "no",
                      _age(i["age_s"]), f"{i['bytes'] / 1e6:.2f}")
    return table


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _ranges(seqs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, s in enumerate(seqs):
        start = s if start is None else start
        if i + 1 == len(seqs) or seqs[i + 1] != s + 1:
            out.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ",".join(out)


def show_main(cfg: StoreShowConfig, console: Console | None = None) -> None:
    console = console or Console(width=120)
    robot, episode = cfg.episode.split("/")
    ep = open_episode_store(cfg.root, read_only=True).load_episode(robot, episode)
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

"""`vlac demos export | import`: one config per command, checked at start, and a thin main."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from vlac.cloud.store.episodes import EpisodeStore
from vlac.cloud.store.lerobot.export import export_lerobot, occupied
from vlac.cloud.store.lerobot.format import (
    CODEBASE_VERSION,
    DEFAULT_DATA_FILE_MB,
    INFO_PATH,
    SOURCES,
    LeRobotFormatError,
)
from vlac.cloud.store.lerobot.importer import import_lerobot
from vlac.shared.config import ConfigError, check, check_id, opt


@dataclass
class LeRobotExportConfig:
    format: Literal["lerobot"] = opt("lerobot", "Dataset format (LeRobotDataset v3.0).")
    root: Path = opt(Path(".cache/store"), "Root folder of the episode store.")
    out: Path = opt(Path(".cache/lerobot"), "Folder to write the LeRobotDataset v3.0 into.")
    fps: int = opt(10, "Frames per second of the episodes (the robot's control rate).")
    sources: list[str] = opt([], "Only episodes from these sources (policy, demo, import); "
                             "empty = all.")
    tasks: list[str] = opt([], "Only episodes with these tasks (ids like push-v3, or the "
                           "sentences); empty = all.")
    robot_type: str = opt("sawyer", "robot_type written to meta/info.json.")
    data_file_mb: float = opt(DEFAULT_DATA_FILE_MB, "Start a new data file past this size (MB).")
    overwrite: bool = opt(False, "Replace an existing, non-empty output folder.")

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.out = Path(self.out)
        check((self.root / "episodes").is_dir(), "root", f"{self.root} is not an episode store "
              "(no episodes/ folder); pass --root of `vlac ingest serve`")
        check(self.fps > 0, "fps", f"must be positive, got {self.fps}")
        bad = sorted(set(self.sources) - set(SOURCES))
        check(not bad, "sources", f"unknown source(s) {bad}; use some of {list(SOURCES)}")
        check(bool(self.robot_type.strip()), "robot_type", "must not be empty, e.g. sawyer")
        check(self.data_file_mb > 0, "data_file_mb", f"must be positive, got {self.data_file_mb}")
        check(self.overwrite or not occupied(self.out), "out",
              f"{self.out} exists and is not empty; choose another folder or pass --overwrite")
        check(self.out.resolve() != self.root.resolve(), "out", "must not be the store root")


def export_main(cfg: LeRobotExportConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(width=120)
    s = export_lerobot(EpisodeStore(cfg.root), cfg.out, fps=cfg.fps, robot_type=cfg.robot_type,
                       sources=cfg.sources or None, tasks=cfg.tasks or None,
                       data_file_mb=cfg.data_file_mb, overwrite=cfg.overwrite)
    console.print(f"exported {s['episodes']} episodes, {s['frames']} frames, "
                  f"{len(s['tasks'])} tasks, {len(s['data_files'])} data file(s), "
                  f"{s['bytes'] / 1e6:.1f} MB to {s['out']} (LeRobotDataset {CODEBASE_VERSION}, "
                  "image mode)")
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    return s


@dataclass
class LeRobotImportConfig:
    path: Path = dataclasses.field(metadata={"help": "LeRobotDataset v3.0 folder (the one "
                                             "holding meta/ and data/)."})
    root: Path = opt(Path(".cache/store"), "Root folder of the episode store.")
    robot_id: str = opt("lerobot", "Robot id the imported episodes are stored under.")
    format: Literal["lerobot"] = opt("lerobot", "Dataset format (LeRobotDataset v3.0).")

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.root = Path(self.root)
        check(self.path.is_dir(), "path", f"{self.path} is not a folder; pass the dataset root")
        check((self.path / INFO_PATH).is_file(), "path", f"{self.path} has no {INFO_PATH}, so "
              "it is not a LeRobotDataset folder; pass the folder holding meta/ and data/")
        check_id(self.robot_id, "robot_id")


def import_main(cfg: LeRobotImportConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(width=120)
    try:
        s = import_lerobot(cfg.path, EpisodeStore(cfg.root), robot_id=cfg.robot_id)
    except LeRobotFormatError as e:
        raise ConfigError(f"config field `path`: {e}") from None
    console.print(f"imported {s['imported']} episodes ({s['frames']} frames) from "
                  f"{cfg.path} as {s['robot_id']}/{s['dataset']}-NNNNNN; {s['skipped']} "
                  "already in the store")
    return s

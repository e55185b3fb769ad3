"""`vlac demos export | import`: one config per command, checked at start, and a thin main."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from vlac.cloud.store.lerobot.export import export_lerobot, occupied
from vlac.cloud.store.lerobot.format import (
    CODEBASE_VERSION,
    DEFAULT_DATA_FILE_MB,
    DEFAULT_VIDEO_FILE_MB,
    INFO_PATH,
    SOURCES,
    LeRobotFormatError,
)
from vlac.cloud.store.lerobot.importer import SUCCESS_RULES, import_lerobot
from vlac.cloud.store.location import open_episode_store, store_location
from vlac.shared.config import ConfigError, check, check_id, opt


@dataclass
class LeRobotExportConfig:
    format: Literal["lerobot"] = opt("lerobot", "Dataset format (LeRobotDataset v3.0).")
    root: Path | str = opt(Path(".cache/store"), "The episode store: a folder or "
                           "s3://BUCKET/PREFIX?endpoint=URL.")
    out: Path = opt(Path(".cache/lerobot"), "Folder to write the LeRobotDataset v3.0 into.")
    fps: int = opt(0, "Frames per second of the episodes (the robot's control rate); 0 = "
                   "from the recorded step interval (the steps' typical spacing, whole Hz).")
    mode: Literal["image", "video"] = opt("image", "How camera frames are stored: image (PNG "
                                          "in the data files, lossless) or video (MP4 per "
                                          "camera, LeRobot's default, lossy).")
    sources: list[str] = opt([], "Only episodes from these sources (policy, demo, import); "
                             "empty = all.")
    tasks: list[str] = opt([], "Only episodes with these tasks (ids like push-v3, or the "
                           "sentences); empty = all.")
    robot_type: str = opt("sawyer", "robot_type written to meta/info.json.")
    data_file_mb: float = opt(DEFAULT_DATA_FILE_MB, "Start a new data file past this size (MB).")
    video_file_mb: float = opt(DEFAULT_VIDEO_FILE_MB, "Video mode: start a new MP4 file past "
                               "this size (MB).")
    overwrite: bool = opt(False, "Replace an existing, non-empty output folder.")

    def __post_init__(self) -> None:
        self.root = store_location(self.root, "root")
        self.out = Path(self.out)
        check(isinstance(self.root, str) or (self.root / "episodes").is_dir(), "root",
              f"{self.root} is not an episode store (no episodes/ folder); pass --root of "
              "`vlac ingest serve`")
        check(self.fps >= 0, "fps", f"must be positive, or 0 to take it from the recorded "
              f"step interval, got {self.fps}")
        bad = sorted(set(self.sources) - set(SOURCES))
        check(not bad, "sources", f"unknown source(s) {bad}; use some of {list(SOURCES)}")
        check(bool(self.robot_type.strip()), "robot_type", "must not be empty, e.g. sawyer")
        check(self.data_file_mb > 0, "data_file_mb", f"must be positive, got {self.data_file_mb}")
        check(self.video_file_mb > 0, "video_file_mb",
              f"must be positive, got {self.video_file_mb}")
        check(self.mode in ("image", "video"), "mode", f"must be image or video, got "
              f"{self.mode!r}")
        check(self.overwrite or not occupied(self.out), "out",
              f"{self.out} exists and is not empty; choose another folder or pass --overwrite")
        check(isinstance(self.root, str) or self.out.resolve() != self.root.resolve(), "out",
              "must not be the store root")


def export_main(cfg: LeRobotExportConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(width=120)
    store = open_episode_store(cfg.root, read_only=True)  # beside a running ingest
    s = export_lerobot(store, cfg.out, fps=cfg.fps, robot_type=cfg.robot_type,
                       sources=cfg.sources or None, tasks=cfg.tasks or None,
                       data_file_mb=cfg.data_file_mb, overwrite=cfg.overwrite,
                       mode=cfg.mode, video_file_mb=cfg.video_file_mb)
    videos = f", {len(s['video_files'])} video file(s)" if s["video_files"] else ""
    how = "" if cfg.fps else " (from the step interval)"
    console.print(f"exported {s['episodes']} episodes, {s['frames']} frames, "
                  f"{len(s['tasks'])} tasks, {len(s['data_files'])} data file(s){videos}, "
                  f"{s['bytes'] / 1e6:.1f} MB to {s['out']} (LeRobotDataset {CODEBASE_VERSION}, "
                  f"{s['mode']} mode, fps {s['fps']}{how})")
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/] {w}")
    return s


@dataclass
class LeRobotImportConfig:
    path: Path = dataclasses.field(metadata={"help": "LeRobotDataset v3.0 folder (the one "
                                             "holding meta/ and data/)."})
    root: Path | str = opt(Path(".cache/store"), "The episode store: a folder or "
                           "s3://BUCKET/PREFIX?endpoint=URL.")
    robot_id: str = opt("lerobot", "Robot id the imported episodes are stored under.")
    format: Literal["lerobot"] = opt("lerobot", "Dataset format (LeRobotDataset v3.0).")

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.root = store_location(self.root, "root")
        check(self.path.is_dir(), "path", f"{self.path} is not a folder; pass the dataset root")
        check((self.path / INFO_PATH).is_file(), "path", f"{self.path} has no {INFO_PATH}, so "
              "it is not a LeRobotDataset folder; pass the folder holding meta/ and data/")
        check_id(self.robot_id, "robot_id")


def import_main(cfg: LeRobotImportConfig, console: Console | None = None) -> dict[str, Any]:
    console = console or Console(width=120)
    try:
        s = import_lerobot(cfg.path, open_episode_store(cfg.root), robot_id=cfg.robot_id)
    except LeRobotFormatError as e:
        raise ConfigError(f"config field `path`: {e}") from None
    console.print(f"imported {s['imported']} episodes ({s['frames']} frames) from "
                  f"{cfg.path} as {s['robot_id']}/{s['dataset']}-NNNNNN; {s['skipped']} "
                  "already in the store")
    for rule, n in s["success_rules"].items():
        console.print(f"success of {n} episode(s) {SUCCESS_RULES[rule]}")
    return s

"""Export store episodes as a LeRobotDataset v3.0 folder (``format`` has the layout).

Episodes are written one at a time, in order: their frames go into the current data file until
it passes ``data_file_mb``, then a new one is started; each gets a row of the episodes table
with its per-episode stats. In image mode the frames are PNGs in the data files; in video mode
each camera's frames are appended to its MP4 file (``video``) and the data files hold the
rest. The tasks table, the aggregated stats and info.json follow. The folder is built next to
the output and renamed into place at the end.

Timestamps are ``frame_index / fps`` as LeRobot writes them (its video decoding matches frames
to them within 1e-4 s, and delta_timestamps assume them); the recorded times go into
``complementary_info.timestamp_measured``. ``fps`` defaults to the recorded step interval.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlac.cloud.store.episodes import Episode, EpisodeStore
from vlac.cloud.store.lerobot.format import (
    ACTION,
    CHUNKS_SIZE,
    CODEBASE_VERSION,
    DATA_PATH,
    DEFAULT_DATA_FILE_MB,
    DEFAULT_FPS,
    DEFAULT_VIDEO_FILE_MB,
    DONE,
    EPISODES_PATH,
    IMAGE_PREFIX,
    IMAGE_TYPE,
    INFO_PATH,
    INTERVENTION,
    MEASURED_TIME,
    REWARD,
    STATE,
    STATS_PATH,
    TASKS_PATH,
    TOKENS,
    VIDEO_PATH,
    data_columns,
    data_schema,
    features_of,
    next_file,
)
from vlac.cloud.store.lerobot.stats import aggregate, episode_stats
from vlac.cloud.store.lerobot.video import CameraVideos, check_frame_size, pick_codec, video_info
from vlac.cloud.store.parquet import vectors_to_arrow

MODES = ("image", "video")

Spec = tuple[dict[str, tuple[int, ...]], int, int]  # camera shapes, proprio and action sizes


def export_lerobot(store: EpisodeStore, out_dir: str | Path, *, fps: int | None = None,
                   robot_type: str = "sawyer", episodes: list[tuple[str, str]] | None = None,
                   sources: list[str] | None = None, tasks: list[str] | None = None,
                   data_file_mb: float = DEFAULT_DATA_FILE_MB, mode: str = "image",
                   video_file_mb: float = DEFAULT_VIDEO_FILE_MB,
                   overwrite: bool = False) -> dict[str, Any]:
    """Write the selected complete episodes as a LeRobotDataset v3.0 in ``out_dir``.

    ``episodes`` picks (robot_id, episode_id) pairs (default: all, in `store ls` order);
    ``sources`` and ``tasks`` filter further (empty or None = no filter). All selected episodes
    must share cameras, image shapes and vector sizes. ``fps`` None (or 0) takes the rate from
    the recorded step interval. ``mode`` "image" embeds PNGs (lossless), "video" encodes MP4s
    (LeRobot's default; lossy). The folder is built next to ``out_dir`` and renamed into place
    at the end, so a failed export leaves nothing half-written; an existing non-empty
    ``out_dir`` is an error unless ``overwrite``. Returns a summary.
    """
    out = Path(out_dir)
    if fps is not None and fps < 0:
        raise ValueError(f"fps must be positive (or 0 to infer it), got {fps}")
    if data_file_mb <= 0 or video_file_mb <= 0:
        raise ValueError(f"data_file_mb and video_file_mb must be positive, got "
                         f"{data_file_mb} and {video_file_mb}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if occupied(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; remove it, choose "
                              "another output folder, or pass overwrite=True (--overwrite)")
    infos = _select(store, episodes, sources, tasks)
    if not infos:
        raise ValueError(f"no complete episode in {store.root} matches sources={sources or 'all'}"
                         f" tasks={tasks or 'all'}; `vlac store ls` lists what is stored")

    warnings: list[str] = []
    if not fps:
        fps, warnings = infer_fps(store, infos)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        layout = _Layout(fps, robot_type, data_file_mb, mode, video_file_mb)
        summary = _write_dataset(store, tmp, infos, layout)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out"] = str(out)
    summary["warnings"] = warnings + summary["warnings"]
    return summary


def infer_fps(store: EpisodeStore, infos: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """The robot's control rate from the recorded step interval, in whole frames per second
    (LeRobot's fps is an integer). The median time between steps is the typical step, and
    leaves out pauses (an operator's reset); the mean of the steps under twice the median then
    averages out the loop's jitter, which a median of few steps does not (the differences of
    jittered times telescope). Reads only the timestamps. Returns the rate, and a warning
    when the timestamps cannot tell."""
    diffs = [np.diff(store.load_columns(i["robot_id"], i["episode_id"], ["timestamp"])
                     ["timestamp"].astype(np.float64))
             for i in infos if i.get("n_steps", 2) > 1]
    d = np.concatenate(diffs) if diffs else np.empty(0)
    d = d[np.isfinite(d) & (d > 0)]
    if not len(d):
        return DEFAULT_FPS, [f"the episodes' timestamps do not increase, so the control rate "
                             f"is unknown; wrote fps={DEFAULT_FPS}: export again with --fps "
                             "set to the robot's rate"]
    interval = float(d[d < 2 * np.median(d)].mean())
    return max(1, round(1.0 / interval)), []


def occupied(path: Path) -> bool:
    """A file, or a folder with something in it: an export would overwrite it."""
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _select(store: EpisodeStore, episodes: list[tuple[str, str]] | None,
            sources: list[str] | None, tasks: list[str] | None) -> list[dict[str, Any]]:
    infos = store.list_episodes()
    if episodes is not None:
        by_key = {(i["robot_id"], i["episode_id"]): i for i in infos}
        missing = [f"{r}/{e}" for r, e in episodes if (r, e) not in by_key]
        if missing:
            raise ValueError(f"episodes not in the store at {store.root}: {missing}; "
                             "`vlac store ls` lists the complete ones")
        infos = [by_key[(r, e)] for r, e in episodes]
    if sources:
        infos = [i for i in infos if i.get("source", "policy") in sources]
    if tasks:
        infos = [i for i in infos if i["task"] in tasks or i.get("task_id") in tasks]
    return infos


# --------------------------------------------------------------------------- the dataset
@dataclass(frozen=True)
class _Layout:
    """How the dataset is written: rate, robot, file sizes (MB) and image mode."""

    fps: int
    robot_type: str
    data_file_mb: float
    mode: str
    video_file_mb: float

    @property
    def data_limit(self) -> float:
        return self.data_file_mb * 1024 ** 2

    @property
    def video_limit(self) -> float:
        return self.video_file_mb * 1024 ** 2


def _write_dataset(store: EpisodeStore, root: Path, infos: list[dict[str, Any]],
                   layout: _Layout) -> dict[str, Any]:
    """The whole dataset into ``root``: the data files, then the metadata. Returns a summary."""
    run = _write_data(store, root, infos, layout)
    _write_episodes(root, run.rows, layout.data_limit)
    _write_tasks(root, run.task_index)
    dataset_stats = {k: aggregate([s[k] for s in run.stats]) for k in run.features}
    _write_json(root / STATS_PATH,
                {k: {n: v.tolist() for n, v in st.items()} for k, st in dataset_stats.items()})
    for key, cam in run.videos.items():  # as LeRobot: probed from the first file
        run.features[key]["info"] = video_info(root / cam.paths[0])
    _write_json(root / INFO_PATH, _info_json(run, layout))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return {"episodes": len(run.rows), "frames": run.frames, "tasks": list(run.task_index),
            "data_files": run.files.paths, "bytes": size, "fps": layout.fps,
            "mode": layout.mode,
            "video_files": [p for cam in run.videos.values() for p in cam.paths],
            "warnings": _fps_warnings(run.intervals, layout.fps)}


def _write_data(store: EpisodeStore, root: Path, infos: list[dict[str, Any]],
                layout: _Layout) -> _Export:
    """Every episode's frames into the data (and video) files, one episode at a time."""
    run: _Export | None = None
    try:
        for ep_index, info in enumerate(infos):
            ep = store.load_episode(info["robot_id"], info["episode_id"])
            if run is None:
                run = _Export.start(root, ep, layout)
            run.add(ep_index, info, ep)
    finally:
        if run is not None:
            run.close()
    assert run is not None, "export_lerobot refuses an empty selection"
    return run


@dataclass
class _DataFiles:
    """The data file being written, one row group per episode; a new file is started when the
    next episode would take it past ``limit`` bytes (never before its first episode)."""

    root: Path
    schema: pa.Schema
    limit: float
    chunk: int = 0
    file: int = 0
    nbytes: int = 0  # about, of the episodes in the current file
    frames: int = 0  # in the current file
    writer: pq.ParquetWriter | None = None
    paths: list[str] = field(default_factory=list)  # relative to root, in order

    def write(self, table: pa.Table, nbytes: int) -> tuple[int, int]:
        """Append one episode's frames; returns the (chunk, file) index they went to."""
        if self.writer is not None and self.frames and self.nbytes + nbytes >= self.limit:
            self.close()
            self.chunk, self.file = next_file(self.chunk, self.file)
            self.nbytes = self.frames = 0
        if self.writer is None:
            rel = DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.root / rel, self.schema, compression="snappy")
            self.paths.append(rel)
        self.writer.write_table(table)
        self.nbytes += nbytes
        self.frames += table.num_rows
        return self.chunk, self.file

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class _Export:
    """An export under way: the layout its first episode fixed, the data files, and what the
    metadata needs of every episode written so far."""

    spec: Spec
    fps: int
    features: dict[str, dict[str, Any]]
    files: _DataFiles
    videos: dict[str, CameraVideos]  # video mode: feature -> its MP4 files
    task_index: dict[str, int] = field(default_factory=dict)  # task -> index, first seen first
    rows: list[dict[str, Any]] = field(default_factory=list)  # of the episodes table
    stats: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)  # per episode
    intervals: list[float] = field(default_factory=list)  # median step interval, to check fps
    frames: int = 0

    @classmethod
    def start(cls, root: Path, first: Episode, layout: _Layout) -> _Export:
        spec = _spec_of(first)
        video = layout.mode == "video"
        features = features_of(*spec, video=video)
        videos = {}
        if video:
            codec = pick_codec()
            for cam, shape in spec[0].items():
                check_frame_size(cam, shape)
                videos[IMAGE_PREFIX + cam] = CameraVideos(root, IMAGE_PREFIX + cam, layout.fps,
                                                          layout.video_limit, codec)
        files = _DataFiles(root, data_schema(features), layout.data_limit)
        return cls(spec, layout.fps, features, files, videos)

    def close(self) -> None:
        """Finish every open file (also after an error: the staging folder is dropped)."""
        try:
            self.files.close()
        finally:
            for cam in self.videos.values():
                cam.close()

    def add(self, ep_index: int, info: dict[str, Any], ep: Episode) -> None:
        """Write one episode's frames and keep its row and stats for the metadata."""
        if _spec_of(ep) != self.spec:
            raise ValueError(
                f"episode {ep.robot_id}/{ep.episode_id} has cameras/proprio/action "
                f"{_spec_of(ep)} but the first exported episode has {self.spec}; a dataset "
                "needs one layout: export them separately (filter with --tasks/--sources)")
        t_idx = self.task_index.setdefault(ep.task, len(self.task_index))
        cols, nbytes = _episode_columns(ep, data_columns(self.features), ep_index, t_idx,
                                        self.frames, self.fps)
        data_file = self.files.write(_to_table(cols, self.files.schema), nbytes)
        videos: dict[str, Any] = {}
        for key, cam in self.videos.items():
            videos.update(cam.write(ep.steps.images[key[len(IMAGE_PREFIX):]]))
        stats = episode_stats(cols, ep.steps.images, self.features)
        self.stats.append(stats)
        self.rows.append(_episode_row(ep_index, ep, info, data_file, self.frames, stats, videos))
        self.frames += len(ep)
        if len(ep) > 1:
            self.intervals.append(float(np.median(np.diff(ep.steps.timestamp))))


def _spec_of(ep: Episode) -> Spec:
    s = ep.steps
    return ({c: tuple(int(d) for d in v.shape[1:]) for c, v in s.images.items()},
            int(s.proprio.shape[1]), int(s.action.shape[1]))


# --------------------------------------------------------------------------- one episode
def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _episode_columns(ep: Episode, features: dict[str, dict[str, Any]], episode_index: int,
                     task_index: int, first_index: int,
                     fps: int) -> tuple[dict[str, Any], int]:
    """One episode's data columns (name -> numpy array, or PNG list for images) and the bytes
    they take in Parquet (about: PNGs are already compressed). ``features`` are the data
    files' columns: no cameras in video mode."""
    s = ep.steps
    n = len(s)
    last = np.zeros(n, bool)
    last[-1] = True
    cols: dict[str, Any] = {}
    nbytes = 0
    for cam, frames in sorted(s.images.items()):
        if IMAGE_PREFIX + cam in features:
            pngs = [_png(f) for f in frames]
            nbytes += sum(len(p) for p in pngs)
            cols[IMAGE_PREFIX + cam] = pngs
    cols[STATE] = s.proprio.astype(np.float32)
    cols[ACTION] = s.action.astype(np.float32)
    cols[REWARD] = np.where(last & bool(ep.outcome.success), 1.0, 0.0).astype(np.float32)
    cols[DONE] = last
    cols[TOKENS] = s.action_tokens.astype(np.int32)
    cols[INTERVENTION] = s.intervention.astype(bool)
    cols[MEASURED_TIME] = s.timestamp.astype(np.float64)
    cols["timestamp"] = (np.arange(n) / fps).astype(np.float32)  # LeRobot's frame_index / fps
    cols["frame_index"] = np.arange(n, dtype=np.int64)
    cols["episode_index"] = np.full(n, episode_index, np.int64)
    cols["index"] = np.arange(first_index, first_index + n, dtype=np.int64)
    cols["task_index"] = np.full(n, task_index, np.int64)
    assert list(cols) == list(features), "column order must follow the features"
    nbytes += n * sum(int(np.prod(ft["shape"])) * np.dtype(ft["dtype"]).itemsize
                      for ft in features.values() if ft["dtype"] not in ("image", "video"))
    return cols, nbytes


def _to_table(cols: dict[str, Any], schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        v = cols[f.name]
        if f.type == IMAGE_TYPE:
            paths = [f"frame-{i:06d}.png" for i in range(len(v))]
            arrays.append(pa.StructArray.from_arrays(
                [pa.array(v, pa.binary()), pa.array(paths, pa.string())],
                fields=list(IMAGE_TYPE)))
        elif pa.types.is_fixed_size_list(f.type):
            arrays.append(vectors_to_arrow(v, f.type.value_type.to_pandas_dtype()))
        else:
            arrays.append(pa.array(v, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _episode_row(ep_index: int, ep: Episode, info: dict[str, Any], data_file: tuple[int, int],
                 first_index: int, stats: dict[str, dict[str, np.ndarray]],
                 videos: dict[str, Any]) -> dict[str, Any]:
    """The episode's row of the episodes table, in LeRobot's column order, then our extras.
    ``videos`` are its ``videos/<key>/*`` columns (video mode); ``meta/episodes/*`` are set by
    ``_write_episodes``."""
    n = len(ep)
    row: dict[str, Any] = {
        "episode_index": ep_index, "tasks": [ep.task], "length": n,
        "data/chunk_index": data_file[0], "data/file_index": data_file[1],
        "dataset_from_index": first_index, "dataset_to_index": first_index + n, **videos,
    }
    for key, st in stats.items():
        for name, value in st.items():
            row[f"stats/{key}/{name}"] = value.tolist()
    row["meta/episodes/chunk_index"] = 0
    row["meta/episodes/file_index"] = 0
    row.update({"success": bool(ep.outcome.success), "reason": ep.outcome.reason,
                "vlac/robot_id": ep.robot_id, "vlac/episode_id": ep.episode_id,
                "vlac/source": info.get("source", "policy"),
                "vlac/task_id": info.get("task_id", ""),
                "vlac/start_time": float(ep.steps.timestamp[0])})
    return row


# --------------------------------------------------------------------------- metadata
def _write_episodes(root: Path, rows: list[dict[str, Any]], limit: float) -> None:
    """Episode rows into meta/episodes/chunk-*/file-*.parquet, a new file past ``limit``."""
    chunk = file = 0
    groups: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        est = len(json.dumps(row))
        if groups[-1] and size + est >= limit:
            chunk, file = next_file(chunk, file)
            groups.append([])
            size = 0
        row["meta/episodes/chunk_index"] = chunk
        row["meta/episodes/file_index"] = file
        groups[-1].append(row)
        size += est
    for group in groups:
        c, f = group[0]["meta/episodes/chunk_index"], group[0]["meta/episodes/file_index"]
        path = root / EPISODES_PATH.format(chunk_index=c, file_index=f)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(group), path, compression="snappy")


def _write_tasks(root: Path, task_index: dict[str, int]) -> None:
    tasks_df = pd.DataFrame({"task_index": np.arange(len(task_index), dtype=np.int64)},
                            index=pd.Index(list(task_index), name="task"))
    tasks_df.to_parquet(root / TASKS_PATH)


def _info_json(run: _Export, layout: _Layout) -> dict[str, Any]:
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": layout.robot_type,
        "total_episodes": len(run.rows),
        "total_frames": run.frames,
        "total_tasks": len(run.task_index),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": layout.data_file_mb,
        "video_files_size_in_mb": layout.video_file_mb,
        "fps": int(layout.fps),
        "splits": {"train": f"0:{len(run.rows)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if run.videos else None,
        "features": run.features,
    }


def _fps_warnings(intervals: list[float], fps: int) -> list[str]:
    """A warning when the steps' real spacing is not what ``fps`` says."""
    if intervals and abs(float(np.median(intervals)) * fps - 1) > 0.2:
        return [f"steps are {np.median(intervals):.3f} s apart (median) but fps={fps} "
                f"says {1 / fps:.3f} s; LeRobot turns delta_timestamps into frame "
                "offsets with fps, so export again with the robot's real rate"]
    return []


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))

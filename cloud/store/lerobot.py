"""Export store episodes as a LeRobotDataset v3.0 folder, and import such a folder back.

LeRobot itself is not a dependency: the format is written and read with pyarrow, pandas and
Pillow, following the layout and metadata of ``lerobot.datasets`` (codebase version ``v3.0``)
so that ``LeRobotDataset(repo_id, root=OUT)`` can open an export (checked against LeRobot's
source, not by running it: it is not installed here). Only the *image* mode is supported
(frames embedded in the data Parquet files as PNG); the video mode (frames in MP4 files) is
refused on import and never written on export.

Layout written (``N`` episodes, ``F`` frames)::

    OUT/meta/info.json                              codebase_version "v3.0", fps, robot_type,
                                                    totals, chunks_size 1000,
                                                    data_files_size_in_mb, video_path null,
                                                    features {key: {dtype, shape, names}},
                                                    splits {"train": "0:N"}
    OUT/meta/stats.json                             per feature: min, max, mean, std, count,
                                                    q01, q10, q50, q90, q99 (images: per
                                                    channel, shape [3,1,1], scaled to [0,1])
    OUT/meta/tasks.parquet                          task_index column, the task string as the
                                                    pandas index (named "task")
    OUT/meta/episodes/chunk-000/file-000.parquet    one row per episode: episode_index, tasks,
                                                    length, data/chunk_index, data/file_index,
                                                    dataset_from_index, dataset_to_index,
                                                    stats/<feature>/<stat>,
                                                    meta/episodes/chunk_index, .../file_index,
                                                    and our extras (see below)
    OUT/data/chunk-{c:03d}/file-{f:03d}.parquet     one row per frame; several episodes per
                                                    file, a new file once ``data_file_mb`` is
                                                    reached, 1000 files per chunk folder

Feature mapping (store step field -> LeRobot feature, one row per step):

    images[<cam>]   observation.images.<cam>            image  [H, W, 3]  struct<bytes: PNG,
                                                                           path: string>
    proprio         observation.state                   float32 [P]   fixed_size_list<float>
    action          action                              float32 [A]   fixed_size_list<float>
    action_tokens   complementary_info.action_tokens    int32   [A]   fixed_size_list<int32>
    intervention    complementary_info.is_intervention  bool    [1]
    timestamp       timestamp                           float32 [1]   seconds since the
                                                                      episode's first step
    (outcome)       next.done                           bool    [1]   True on the last frame
    (outcome)       next.reward                         float32 [1]   1.0 on the last frame of
                                                                      a successful episode
                    frame_index, episode_index, index (global), task_index   int64 [1]

Names follow LeRobot: ``next.done``/``next.reward`` are what its gym_manipulator and HIL-SERL
replay buffer read; ``complementary_info.<key>`` is how that buffer stores per-transition extras
(its intervention flag is ``is_intervention``). The token column is *not* called
``action_tokens``: LeRobot types every feature whose key starts with ``action`` as a policy
ACTION output, so a policy trained on the export would try to predict it.

Extra columns of the episodes table (ignored by LeRobot, used by ``import_lerobot``):
``success`` (bool), ``reason`` (string), ``vlac/robot_id``, ``vlac/episode_id``,
``vlac/source``, ``vlac/task_id`` and ``vlac/start_time`` (float64 unix seconds of the first
step).

Not carried over: ``logprob`` and ``policy_version`` (an import sets 0 and -1: the steps did not
come from one of our policies). Imported timestamps are ``vlac/start_time`` plus the float32
``timestamp`` (sub-microsecond error over a few minutes), or just ``timestamp`` when the dataset
has no start time.

Import accepts any v3.0 image-mode dataset with ``observation.state`` and ``action``:
cameras are the ``observation.images.<cam>`` (or ``observation.image``) features; tokens are
computed from the action (clipped to [-1, 1], 256 bins) when the dataset has none; intervention
defaults to False; success comes from the ``success`` column or a ``next.success`` feature,
else False. Each episode becomes ``<robot_id>/<dataset-name>-<episode_index:06d>``, so importing
the same folder twice writes nothing the second time.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from rich.console import Console

from vlac.cloud.store.episodes import Episode, EpisodeStore
from vlac.shared.config import ConfigError, check, check_id, opt
from vlac.shared.episode import StepColumns
from vlac.shared.tokenizer import ActionTokenizer
from vlac.shared.wire import is_valid_id

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder
DEFAULT_DATA_FILE_MB = 100
DEFAULT_VIDEO_FILE_MB = 500  # written to info.json for completeness; videos are never written
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
TOKENS = "complementary_info.action_tokens"
INTERVENTION = "complementary_info.is_intervention"
DONE = "next.done"
REWARD = "next.reward"
SUCCESS_FEATURE = "next.success"
DEFAULT_FEATURE_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
STATE_NAMES_4 = ["x", "y", "z", "gripper"]
ACTION_NAMES_4 = ["dx", "dy", "dz", "gripper"]
SOURCES = ("policy", "demo", "import")


class LeRobotFormatError(ValueError):
    """A folder that is not a LeRobotDataset this module can read. Says what and how to fix."""


# --------------------------------------------------------------------------- features
def _scalar(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def _features(cameras: dict[str, tuple[int, ...]], proprio_dim: int,
              action_dim: int) -> dict[str, dict[str, Any]]:
    """info.json features, in the order of the data files' columns (defaults last)."""
    feats: dict[str, dict[str, Any]] = {}
    for cam, shape in sorted(cameras.items()):
        feats[IMAGE_PREFIX + cam] = {"dtype": "image", "shape": list(shape),
                                     "names": ["height", "width", "channels"]}
    state_names = STATE_NAMES_4 if proprio_dim == 4 else [f"s{i}" for i in range(proprio_dim)]
    action_names = ACTION_NAMES_4 if action_dim == 4 else [f"a{i}" for i in range(action_dim)]
    feats[STATE] = {"dtype": "float32", "shape": [proprio_dim], "names": state_names}
    feats[ACTION] = {"dtype": "float32", "shape": [action_dim], "names": action_names}
    feats[REWARD] = _scalar("float32")
    feats[DONE] = _scalar("bool")
    feats[TOKENS] = {"dtype": "int32", "shape": [action_dim], "names": list(action_names)}
    feats[INTERVENTION] = _scalar("bool")
    feats["timestamp"] = _scalar("float32")
    for k in DEFAULT_FEATURE_KEYS[1:]:
        feats[k] = _scalar("int64")
    return feats


_IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def _arrow_type(ft: dict[str, Any]) -> pa.DataType:
    if ft["dtype"] == "image":
        return _IMAGE_TYPE
    base = pa.from_numpy_dtype(np.dtype(ft["dtype"]))
    return base if list(ft["shape"]) == [1] else pa.list_(base, ft["shape"][0])


def _hf_feature(ft: dict[str, Any]) -> dict[str, Any]:
    """The Hugging Face `datasets` feature (as serialised in Parquet metadata) that LeRobot's
    get_hf_features_from_features makes of a feature: Image, Value or fixed-length Sequence."""
    if ft["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": ft["dtype"], "_type": "Value"}
    if list(ft["shape"]) == [1]:
        return value
    return {"feature": value, "length": ft["shape"][0], "_type": "Sequence"}


def _data_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    hf = {"info": {"features": {k: _hf_feature(ft) for k, ft in features.items()}}}
    return pa.schema([pa.field(k, _arrow_type(ft)) for k, ft in features.items()],
                     metadata={b"huggingface": json.dumps(hf).encode()})


# --------------------------------------------------------------------------- stats
def _sample_indices(n: int) -> np.ndarray:
    """Frames used for image stats: all of a short episode, ~n**0.75 of a long one."""
    num = max(min(n, 100), min(int(n ** 0.75), 10_000))
    return np.unique(np.round(np.linspace(0, n - 1, num)).astype(int))


def _vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over the first axis of a (T, D) array; every stat has shape (D,)."""
    x = values.astype(np.float64) if values.dtype == bool else values
    out = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0, dtype=np.float64),
           "std": x.std(axis=0, dtype=np.float64), "count": np.array([len(x)])}
    qs = np.quantile(x.astype(np.float64), QUANTILES, axis=0)
    for key, q in zip(QUANTILE_KEYS, qs, strict=True):
        out[key] = q
    return out


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (T, H, W, C) uint8 frames, scaled to [0, 1], shape (C, 1, 1)."""
    sample = frames[_sample_indices(len(frames))]
    h, w = sample.shape[1:3]
    if max(h, w) >= 300:  # large frames: subsample pixels, stats barely change
        step = max(1, int(max(h, w) / 150))
        sample = sample[:, ::step, ::step]
    pixels = sample.reshape(-1, sample.shape[-1])
    out: dict[str, np.ndarray] = {
        "min": pixels.min(axis=0).astype(np.float64), "max": pixels.max(axis=0).astype(np.float64),
        "mean": pixels.mean(axis=0, dtype=np.float64), "std": pixels.std(axis=0, dtype=np.float64),
    }
    cdf = np.stack([np.cumsum(np.bincount(pixels[:, c], minlength=256))
                    for c in range(pixels.shape[1])])
    for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
        # smallest value whose cumulative count reaches q of the pixels (exact on uint8)
        out[key] = np.array([np.searchsorted(row, q * row[-1]) for row in cdf], np.float64)
    out = {k: (v / 255.0).reshape(-1, 1, 1) for k, v in out.items()}
    out["count"] = np.array([len(sample)])
    return out


def _aggregate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset stats from episode stats, as LeRobot aggregates them: count-weighted means,
    pooled variance, min of mins, max of maxes, count-weighted quantiles."""
    counts = np.array([p["count"][0] for p in parts], np.float64)
    total = counts.sum()
    means = np.stack([p["mean"] for p in parts])
    w = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * w).sum(axis=0) / total
    var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
    out = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
           "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    for key in QUANTILE_KEYS:
        out[key] = (np.stack([p[key] for p in parts]) * w).sum(axis=0) / total
    return out


# --------------------------------------------------------------------------- export
def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _fixed(arr: np.ndarray, dtype: str) -> pa.Array:
    arr = np.ascontiguousarray(arr, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


def _episode_columns(ep: Episode, features: dict[str, dict[str, Any]], episode_index: int,
                     task_index: int, first_index: int) -> tuple[dict[str, Any], int]:
    """One episode's data columns (name -> numpy array, or PNG list for images) and the bytes
    they take in Parquet (about: PNGs are already compressed)."""
    s = ep.steps
    n = len(s)
    last = np.zeros(n, bool)
    last[-1] = True
    cols: dict[str, Any] = {}
    nbytes = 0
    for cam, frames in sorted(s.images.items()):
        pngs = [_png(f) for f in frames]
        nbytes += sum(len(p) for p in pngs)
        cols[IMAGE_PREFIX + cam] = pngs
    cols[STATE] = s.proprio.astype(np.float32)
    cols[ACTION] = s.action.astype(np.float32)
    cols[REWARD] = np.where(last & bool(ep.outcome.success), 1.0, 0.0).astype(np.float32)
    cols[DONE] = last
    cols[TOKENS] = s.action_tokens.astype(np.int32)
    cols[INTERVENTION] = s.intervention.astype(bool)
    cols["timestamp"] = (s.timestamp - s.timestamp[0]).astype(np.float32)
    cols["frame_index"] = np.arange(n, dtype=np.int64)
    cols["episode_index"] = np.full(n, episode_index, np.int64)
    cols["index"] = np.arange(first_index, first_index + n, dtype=np.int64)
    cols["task_index"] = np.full(n, task_index, np.int64)
    assert list(cols) == list(features), "column order must follow the features"
    nbytes += n * sum(int(np.prod(ft["shape"])) * np.dtype(ft["dtype"]).itemsize
                      for ft in features.values() if ft["dtype"] != "image")
    return cols, nbytes


def _to_table(cols: dict[str, Any], schema: pa.Schema) -> pa.Table:
    arrays = []
    for f in schema:
        v = cols[f.name]
        if f.type == _IMAGE_TYPE:
            paths = [f"frame-{i:06d}.png" for i in range(len(v))]
            arrays.append(pa.StructArray.from_arrays(
                [pa.array(v, pa.binary()), pa.array(paths, pa.string())],
                fields=list(_IMAGE_TYPE)))
        elif pa.types.is_fixed_size_list(f.type):
            arrays.append(_fixed(v, f.type.value_type.to_pandas_dtype()))
        else:
            arrays.append(pa.array(v, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _episode_stats(cols: dict[str, Any], frames: dict[str, np.ndarray],
                   features: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    stats = {}
    for key, ft in features.items():
        if ft["dtype"] == "image":
            stats[key] = _image_stats(frames[key[len(IMAGE_PREFIX):]])
        else:
            v = np.asarray(cols[key])
            stats[key] = _vector_stats(v.reshape(len(v), -1))
    return stats


def _spec_of(ep: Episode) -> tuple[dict[str, tuple[int, ...]], int, int]:
    s = ep.steps
    return ({c: tuple(int(d) for d in v.shape[1:]) for c, v in s.images.items()},
            int(s.proprio.shape[1]), int(s.action.shape[1]))


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


def export_lerobot(store: EpisodeStore, out_dir: str | Path, *, fps: int = 10,
                   robot_type: str = "sawyer", episodes: list[tuple[str, str]] | None = None,
                   sources: list[str] | None = None, tasks: list[str] | None = None,
                   data_file_mb: float = DEFAULT_DATA_FILE_MB,
                   overwrite: bool = False) -> dict[str, Any]:
    """Write the selected complete episodes as a LeRobotDataset v3.0 (image mode) in ``out_dir``.

    ``episodes`` picks (robot_id, episode_id) pairs (default: all, in `store ls` order);
    ``sources`` and ``tasks`` filter further (empty or None = no filter). All selected episodes
    must share cameras, image shapes and vector sizes. The folder is built next to ``out_dir``
    and renamed into place at the end, so a failed export leaves nothing half-written; an
    existing non-empty ``out_dir`` is an error unless ``overwrite``. Returns a summary.
    """
    out = Path(out_dir)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if data_file_mb <= 0:
        raise ValueError(f"data_file_mb must be positive, got {data_file_mb}")
    if _occupied(out) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; remove it, choose "
                              "another output folder, or pass overwrite=True (--overwrite)")
    infos = _select(store, episodes, sources, tasks)
    if not infos:
        raise ValueError(f"no complete episode in {store.root} matches sources={sources or 'all'}"
                         f" tasks={tasks or 'all'}; `vlac store ls` lists what is stored")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        summary = _write_dataset(store, tmp, infos, fps, robot_type, data_file_mb)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out"] = str(out)
    return summary


def _occupied(path: Path) -> bool:
    return path.is_file() or (path.is_dir() and any(path.iterdir()))


def _write_dataset(store: EpisodeStore, root: Path, infos: list[dict[str, Any]], fps: int,
                   robot_type: str, data_file_mb: float) -> dict[str, Any]:
    limit = data_file_mb * 1024 ** 2
    features: dict[str, dict[str, Any]] | None = None
    schema: pa.Schema | None = None
    spec = None
    task_index: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    ep_stats: list[dict[str, dict[str, np.ndarray]]] = []
    writer: pq.ParquetWriter | None = None
    chunk = file = 0
    file_bytes = file_frames = total = 0
    data_files: list[str] = []
    intervals: list[float] = []  # median step interval of each episode, to check fps
    try:
        for ep_index, info in enumerate(infos):
            ep = store.load_episode(info["robot_id"], info["episode_id"])
            if spec is None:
                spec = _spec_of(ep)
                features = _features(*spec)
                schema = _data_schema(features)
            elif _spec_of(ep) != spec:
                raise ValueError(
                    f"episode {ep.robot_id}/{ep.episode_id} has cameras/proprio/action "
                    f"{_spec_of(ep)} but the first exported episode has {spec}; a dataset "
                    "needs one layout: export them separately (filter with --tasks/--sources)")
            assert features is not None and schema is not None
            t_idx = task_index.setdefault(ep.task, len(task_index))
            cols, nbytes = _episode_columns(ep, features, ep_index, t_idx, total)
            if writer is not None and file_frames and file_bytes + nbytes >= limit:
                writer.close()
                writer = None
                chunk, file = _next_file(chunk, file)
                file_bytes = file_frames = 0
            if writer is None:
                rel = DATA_PATH.format(chunk_index=chunk, file_index=file)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(root / rel, schema, compression="snappy")
                data_files.append(rel)
            writer.write_table(_to_table(cols, schema))  # one row group per episode
            n = len(ep)
            stats = _episode_stats(cols, ep.steps.images, features)
            ep_stats.append(stats)
            row: dict[str, Any] = {
                "episode_index": ep_index, "tasks": [ep.task], "length": n,
                "data/chunk_index": chunk, "data/file_index": file,
                "dataset_from_index": total, "dataset_to_index": total + n,
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
            rows.append(row)
            file_bytes += nbytes
            file_frames += n
            total += n
            if n > 1:
                intervals.append(float(np.median(np.diff(ep.steps.timestamp))))
    finally:
        if writer is not None:
            writer.close()
    assert features is not None

    _write_episodes(root, rows, limit)
    tasks_df = pd.DataFrame({"task_index": np.arange(len(task_index), dtype=np.int64)},
                            index=pd.Index(list(task_index), name="task"))
    tasks_df.to_parquet(root / TASKS_PATH)
    dataset_stats = {k: _aggregate([s[k] for s in ep_stats]) for k in features}
    _write_json(root / STATS_PATH,
                {k: {n: v.tolist() for n, v in st.items()} for k, st in dataset_stats.items()})
    info_json = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(rows),
        "total_frames": total,
        "total_tasks": len(task_index),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": data_file_mb,
        "video_files_size_in_mb": DEFAULT_VIDEO_FILE_MB,
        "fps": int(fps),
        "splits": {"train": f"0:{len(rows)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
    }
    _write_json(root / INFO_PATH, info_json)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    warnings = []
    if intervals and abs(float(np.median(intervals)) * fps - 1) > 0.2:
        warnings.append(f"steps are {np.median(intervals):.3f} s apart (median) but fps={fps} "
                        f"says {1 / fps:.3f} s; LeRobot turns delta_timestamps into frame "
                        "offsets with fps, so export again with the robot's real rate")
    return {"episodes": len(rows), "frames": total, "tasks": list(task_index),
            "data_files": data_files, "bytes": size, "warnings": warnings}


def _write_episodes(root: Path, rows: list[dict[str, Any]], limit: float) -> None:
    """Episode rows into meta/episodes/chunk-*/file-*.parquet, a new file past ``limit``."""
    chunk = file = 0
    groups: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        est = len(json.dumps(row))
        if groups[-1] and size + est >= limit:
            chunk, file = _next_file(chunk, file)
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


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


# --------------------------------------------------------------------------- import
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def lerobot_episode_id(dataset_name: str, episode_index: int) -> str:
    """Store episode id of an imported episode: ``<dataset-name>-<episode_index:06d>``, with
    characters our ids do not allow replaced by '-' and the name cut to fit 64 characters."""
    suffix = f"-{episode_index:06d}"
    name = _BAD_ID_CHARS.sub("-", dataset_name).lstrip("_.-")[:64 - len(suffix)] or "lerobot"
    return name + suffix


def _fail(root: Path, problem: str, fix: str) -> LeRobotFormatError:
    return LeRobotFormatError(f"cannot import {root}: {problem}. {fix}")


def read_info(root: str | Path) -> dict[str, Any]:
    """meta/info.json of a dataset folder, checked for what import needs (v3.0, image mode)."""
    root = Path(root)
    path = root / INFO_PATH
    if not path.is_file():
        raise _fail(root, f"{INFO_PATH} is missing, so this is not a LeRobotDataset folder",
                    "Pass the dataset root, the folder that holds meta/ and data/")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(root, f"{INFO_PATH} is not valid JSON ({e})",
                    "Restore the file from the dataset's source") from None
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        fix = ("Convert it first with LeRobot: python -m "
               "lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<repo> --root=<folder> "
               "--push-to-hub=false" if str(version).startswith("v2") else
               "Only LeRobotDataset v3.0 is supported")
        raise _fail(root, f"codebase_version is {version!r}, expected {CODEBASE_VERSION!r}", fix)
    features = info.get("features")
    if not isinstance(features, dict):
        raise _fail(root, f"{INFO_PATH} has no features mapping",
                    "Restore the file from the dataset's source")
    videos = sorted(k for k, ft in features.items() if ft.get("dtype") == "video")
    if videos:
        images = [k for k, ft in features.items() if ft.get("dtype") == "image"]
        raise _fail(
            root, f"it stores cameras as MP4 videos ({', '.join(videos)}; video_path "
            f"{info.get('video_path')!r}" + (f", next to image features {images}" if images
                                             else ", no image features") + "), and video "
            "mode is not supported",
            "Re-create the dataset in image mode (LeRobotDataset.create(..., use_videos=False)) "
            "or decode the videos into image features first")
    missing = [k for k in (STATE, ACTION, "episode_index", "frame_index") if k not in features]
    if missing:
        raise _fail(root, f"required feature(s) {missing} are missing from {INFO_PATH}",
                    "The store needs observation.state and action per frame; datasets without "
                    "them cannot be imported")
    for k in (STATE, ACTION):
        if len(features[k].get("shape", [])) != 1:
            raise _fail(root, f"feature {k} has shape {features[k].get('shape')}, expected one "
                        "dimension", "Flatten it to a vector before importing")
    if not info.get("data_path"):
        raise _fail(root, f"{INFO_PATH} has no data_path template",
                    f"Add \"data_path\": \"{DATA_PATH}\"")
    return info


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.is_file():
        raise _fail(root, f"{TASKS_PATH} is missing", "Restore it from the dataset's source")
    df = pd.read_parquet(path)
    if "task_index" not in df.columns:
        raise _fail(root, f"{TASKS_PATH} has no task_index column",
                    "Restore it from the dataset's source")
    names = df["task"] if "task" in df.columns else pd.Series(df.index, index=df.index)
    return {int(i): str(t) for i, t in zip(df["task_index"], names, strict=True)}


def _read_episodes(root: Path) -> list[dict[str, Any]]:
    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise _fail(root, f"no episode metadata ({EPISODES_DIR}/chunk-*/file-*.parquet)",
                    "Restore meta/episodes/ from the dataset's source")
    rows = []
    for f in files:
        names = [n for n in pq.read_schema(f).names if not n.startswith("stats/")]
        rows += pq.read_table(f, columns=names).to_pylist()
    if any("episode_index" not in r for r in rows):
        raise _fail(root, f"{EPISODES_DIR} has no episode_index column",
                    "Restore meta/episodes/ from the dataset's source")
    return sorted(rows, key=lambda r: r["episode_index"])


def _column_numpy(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) \
            or pa.types.is_large_list(arr.type):
        flat = arr.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(arr), -1)
    return arr.to_numpy(zero_copy_only=False)


def _decode(data: bytes | None, where: str) -> np.ndarray:
    if data is None:
        raise LeRobotFormatError(f"{where}: the frame has no embedded image bytes (only a "
                                 "path); re-save the dataset with images embedded")
    img = Image.open(io.BytesIO(data))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def import_lerobot(in_dir: str | Path, store: EpisodeStore, *, robot_id: str = "lerobot",
                   source: str = "import", chunk_steps: int = 64) -> dict[str, Any]:
    """Write every episode of a LeRobotDataset v3.0 (image mode) folder into ``store``.

    Episodes become ``robot_id/<dataset-name>-<episode_index:06d>`` (see the module docstring
    for how fields map); one already complete in the store is skipped, so importing the same
    folder again is a no-op. Raises LeRobotFormatError naming the problem and the fix for a
    folder it cannot read. Returns a summary.
    """
    root = Path(in_dir)
    if not is_valid_id(robot_id):
        raise ValueError(f"robot_id {robot_id!r} is not a valid id: use letters, digits, '_', "
                         "'.', '-' (at most 64, starting with a letter or digit)")
    info = read_info(root)
    features: dict[str, dict[str, Any]] = info["features"]
    fps = info.get("fps") or 0
    tasks = _read_tasks(root)
    episodes = _read_episodes(root)
    if info.get("total_episodes") is not None and info["total_episodes"] != len(episodes):
        raise _fail(root, f"{INFO_PATH} says {info['total_episodes']} episodes but "
                    f"{EPISODES_DIR} lists {len(episodes)}", "The download is incomplete: "
                    "fetch the dataset again")
    cams = {k: k[len(IMAGE_PREFIX):] if k.startswith(IMAGE_PREFIX) else k.split(".")[-1]
            for k, ft in features.items() if ft.get("dtype") == "image"}
    tokens_key = next((k for k in (TOKENS, "action_tokens") if k in features), None)
    interv_key = next((k for k in (INTERVENTION, "complementary_info.intervention",
                                   "is_intervention", "intervention") if k in features), None)
    action_dim = int(features[ACTION]["shape"][0])
    tokenizer = ActionTokenizer([-1.0] * action_dim, [1.0] * action_dim, 256)
    name = root.resolve().name

    # group episodes by the data file that holds them (LeRobot never splits an episode)
    by_file: dict[Path, list[dict[str, Any]]] = {}
    for ep in episodes:
        if "data/chunk_index" in ep and "data/file_index" in ep:
            rel = info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                           file_index=ep["data/file_index"])
            by_file.setdefault(root / rel, []).append(ep)
        else:
            raise _fail(root, f"episode {ep['episode_index']} has no data/chunk_index, "
                        "data/file_index in its metadata", "Restore meta/episodes/ from the "
                        "dataset's source")
    imported: list[str] = []
    skipped: list[str] = []
    frames = 0
    for path, eps in by_file.items():
        if not path.is_file():
            raise _fail(root, f"data file {path.relative_to(root)} is missing (episodes "
                        f"{[e['episode_index'] for e in eps]} live there)",
                        "The download is incomplete: fetch the dataset again")
        todo = [e for e in eps
                if not (store.episode_dir(robot_id, lerobot_episode_id(name, e["episode_index"]))
                        / "_episode.json").exists()]
        skipped += [lerobot_episode_id(name, e["episode_index"]) for e in eps if e not in todo]
        if not todo:
            continue
        wanted = [k for k in features if features[k].get("dtype") != "video"]
        present = set(pq.read_schema(path).names)
        lost = [k for k in (STATE, ACTION, "episode_index", "frame_index", *cams)
                if k not in present]
        if lost:
            raise _fail(root, f"data file {path.relative_to(root)} lacks column(s) {lost} "
                        f"declared in {INFO_PATH}", "Restore the file from the dataset's source")
        table = pq.read_table(path, columns=[k for k in wanted if k in present])
        ep_col = _column_numpy(table.column("episode_index")).reshape(-1)
        order = np.lexsort((_column_numpy(table.column("frame_index")).reshape(-1), ep_col))
        table = table.take(pa.array(order))
        ep_col = ep_col[order]
        numeric = {k: _column_numpy(table.column(k)) for k in table.column_names if k not in cams}
        images = {k: table.column(k).combine_chunks().field("bytes").to_pylist() for k in cams}
        for ep in todo:
            idx = int(ep["episode_index"])
            rows = np.flatnonzero(ep_col == idx)
            where = f"{path.relative_to(root)} episode {idx}"
            if len(rows) == 0:
                raise _fail(root, f"{where}: no frames in the data file its metadata points "
                            "to", "The dataset is inconsistent: fetch it again")
            if ep.get("length") is not None and int(ep["length"]) != len(rows):
                raise _fail(root, f"{where}: {len(rows)} frames in the data file but its "
                            f"metadata says length {ep['length']}", "The dataset is "
                            "inconsistent: fetch it again")
            a, b = int(rows[0]), int(rows[-1]) + 1
            steps = _steps_from_rows(numeric, images, cams, a, b, tokens_key, interv_key,
                                     tokenizer, ep.get("vlac/start_time"), fps, where)
            task_idx = int(numeric["task_index"][a]) if "task_index" in numeric else None
            task = tasks.get(task_idx) if task_idx is not None else None
            if task is None:
                task = (ep.get("tasks") or [""])[0]
            if ep.get("success") is not None:
                success = bool(ep["success"])
            elif SUCCESS_FEATURE in numeric:
                success = bool(np.asarray(numeric[SUCCESS_FEATURE][a:b]).astype(bool).any())
            else:
                success = False
            reason = ep.get("reason") or ("success" if success else "imported")
            ep_id = lerobot_episode_id(name, idx)
            store.write_episode(robot_id, ep_id, task, steps, success, reason,
                                chunk_steps=chunk_steps, source=source,
                                task_id=str(ep.get("vlac/task_id") or "")[:100])
            imported.append(ep_id)
            frames += b - a
    return {"dataset": name, "robot_id": robot_id, "episodes": len(episodes),
            "imported": len(imported), "skipped": len(skipped), "frames": frames,
            "episode_ids": imported + skipped}


def _steps_from_rows(numeric: dict[str, np.ndarray], images: dict[str, list[bytes | None]],
                     cams: dict[str, str], a: int, b: int, tokens_key: str | None,
                     interv_key: str | None, tokenizer: ActionTokenizer,
                     start_time: float | None, fps: float, where: str) -> StepColumns:
    n = b - a
    action = np.ascontiguousarray(numeric[ACTION][a:b], np.float32).reshape(n, -1)
    if not np.isfinite(action).all():
        raise LeRobotFormatError(f"{where}: action contains NaN or infinity")
    if tokens_key is not None and numeric[tokens_key].reshape(len(numeric[tokens_key]), -1)\
            .shape[1] == action.shape[1]:
        tokens = np.ascontiguousarray(numeric[tokens_key][a:b], np.int32).reshape(n, -1)
    else:
        tokens = tokenizer.encode(action)
    if interv_key is not None:
        interv = np.asarray(numeric[interv_key][a:b]).reshape(n, -1)[:, 0].astype(np.float64) > 0.5
    else:
        interv = np.zeros(n, bool)
    if "timestamp" in numeric:
        rel = np.asarray(numeric["timestamp"][a:b], np.float64).reshape(n)
    else:
        rel = np.arange(n, dtype=np.float64) / (fps or 1)
    ts = rel + (float(start_time) if start_time is not None else 0.0)
    imgs = {cam: np.stack([_decode(d, f"{where} {key}") for d in images[key][a:b]])
            for key, cam in cams.items()}
    return StepColumns(
        images=imgs,
        proprio=np.ascontiguousarray(numeric[STATE][a:b], np.float32).reshape(n, -1),
        action=action,
        action_tokens=tokens,
        logprob=np.zeros(n, np.float32),
        policy_version=np.full(n, -1, np.int64),
        intervention=interv,
        timestamp=ts,
    )


# --------------------------------------------------------------------------- CLI
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
        check(self.overwrite or not _occupied(self.out), "out",
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

"""The LeRobotDataset v3.0 layout (image and video mode) as this package writes and reads it.

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
    OUT/videos/<key>/chunk-{c:03d}/file-{f:03d}.mp4 video mode only: one camera's frames,
                                                    several episodes back to back, a new file
                                                    once ``video_file_mb`` is reached; the
                                                    episode's span is videos/<key>/
                                                    {chunk_index, file_index, from_timestamp,
                                                    to_timestamp} in the episodes table

Feature mapping (store step field -> LeRobot feature, one row per step):

    images[<cam>]   observation.images.<cam>            image  [H, W, 3]  struct<bytes: PNG,
                                                                           path: string>
                                                        or video [H, W, 3] (no data column:
                                                        the frames are in the MP4 files)
    proprio         observation.state                   float32 [P]   fixed_size_list<float>
    action          action                              float32 [A]   fixed_size_list<float>
    action_tokens   complementary_info.action_tokens    int32   [A]   fixed_size_list<int32>
    intervention    complementary_info.is_intervention  bool    [1]
    (frame_index)   timestamp                           float32 [1]   frame_index / fps, as
                                                                      LeRobot writes it (its
                                                                      video decoding and
                                                                      delta_timestamps need it)
    timestamp       complementary_info.timestamp_measured  float64 [1]  the step's recorded
                                                                      time (unix seconds), so
                                                                      an import restores it
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

This module holds the names and paths, the features and Arrow schema of the data files, the
error type and ``read_info``, which checks a folder's meta/info.json before an import.
The MP4 side of video mode is in ``video``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder
DEFAULT_DATA_FILE_MB = 100
DEFAULT_VIDEO_FILE_MB = 500
DEFAULT_FPS = 10  # only when the episodes' timestamps cannot tell the rate
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"

IMAGE_PREFIX = "observation.images."
STATE = "observation.state"
ACTION = "action"
TOKENS = "complementary_info.action_tokens"
INTERVENTION = "complementary_info.is_intervention"
DONE = "next.done"
REWARD = "next.reward"
SUCCESS_FEATURE = "next.success"
# A complementary_info extra, not observation.*: LeRobot makes every observation.* feature a
# policy STATE input, and a policy must not learn from wall-clock time.
MEASURED_TIME = "complementary_info.timestamp_measured"
DEFAULT_FEATURE_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")

STATE_NAMES_4 = ["x", "y", "z", "gripper"]
ACTION_NAMES_4 = ["dx", "dy", "dz", "gripper"]
SOURCES = ("policy", "demo", "import")

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class LeRobotFormatError(ValueError):
    """A folder that is not a LeRobotDataset this module can read. Says what and how to fix."""


def fail(root: Path, problem: str, fix: str) -> LeRobotFormatError:
    """The error for a dataset at ``root`` that cannot be imported: the problem, then the fix."""
    return LeRobotFormatError(f"cannot import {root}: {problem}. {fix}")


def next_file(chunk: int, file: int) -> tuple[int, int]:
    """The (chunk, file) index after this one: 1000 files per chunk folder."""
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


def lerobot_episode_id(dataset_name: str, episode_index: int) -> str:
    """Store episode id of an imported episode: ``<dataset-name>-<episode_index:06d>``, with
    characters our ids do not allow replaced by '-' and the name cut to fit 64 characters."""
    suffix = f"-{episode_index:06d}"
    name = _BAD_ID_CHARS.sub("-", dataset_name).lstrip("_.-")[:64 - len(suffix)] or "lerobot"
    return name + suffix


# --------------------------------------------------------------------------- features
def _scalar(dtype: str) -> dict[str, Any]:
    return {"dtype": dtype, "shape": [1], "names": None}


def features_of(cameras: dict[str, tuple[int, ...]], proprio_dim: int, action_dim: int,
                video: bool = False) -> dict[str, dict[str, Any]]:
    """info.json features, in the order of the data files' columns (defaults last); in video
    mode the cameras have dtype "video" (their "info" is added once the files exist)."""
    feats: dict[str, dict[str, Any]] = {}
    for cam, shape in sorted(cameras.items()):
        feats[IMAGE_PREFIX + cam] = {"dtype": "video" if video else "image",
                                     "shape": list(shape),
                                     "names": ["height", "width", "channels"]}
    state_names = STATE_NAMES_4 if proprio_dim == 4 else [f"s{i}" for i in range(proprio_dim)]
    action_names = ACTION_NAMES_4 if action_dim == 4 else [f"a{i}" for i in range(action_dim)]
    feats[STATE] = {"dtype": "float32", "shape": [proprio_dim], "names": state_names}
    feats[ACTION] = {"dtype": "float32", "shape": [action_dim], "names": action_names}
    feats[REWARD] = _scalar("float32")
    feats[DONE] = _scalar("bool")
    feats[TOKENS] = {"dtype": "int32", "shape": [action_dim], "names": list(action_names)}
    feats[INTERVENTION] = _scalar("bool")
    feats[MEASURED_TIME] = _scalar("float64")
    feats["timestamp"] = _scalar("float32")
    for k in DEFAULT_FEATURE_KEYS[1:]:
        feats[k] = _scalar("int64")
    return feats


def _arrow_type(ft: dict[str, Any]) -> pa.DataType:
    if ft["dtype"] == "image":
        return IMAGE_TYPE
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


def data_columns(features: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The features that are columns of the data files: all but videos (LeRobot's
    get_hf_features_from_features skips them too)."""
    return {k: ft for k, ft in features.items() if ft["dtype"] != "video"}


def data_schema(features: dict[str, dict[str, Any]]) -> pa.Schema:
    """Arrow schema of the data files: one field per non-video feature, with the Hugging Face
    features in the ``huggingface`` metadata as `datasets` writes them."""
    cols = data_columns(features)
    hf = {"info": {"features": {k: _hf_feature(ft) for k, ft in cols.items()}}}
    return pa.schema([pa.field(k, _arrow_type(ft)) for k, ft in cols.items()],
                     metadata={b"huggingface": json.dumps(hf).encode()})


# --------------------------------------------------------------------------- info.json
def read_info(root: str | Path) -> dict[str, Any]:
    """meta/info.json of a dataset folder, checked for what import needs (v3.0; images
    embedded or in MP4 videos)."""
    root = Path(root)
    info = _load_info(root)
    _check_version(root, info.get("codebase_version"))
    features = info.get("features")
    if not isinstance(features, dict):
        raise fail(root, f"{INFO_PATH} has no features mapping",
                   "Restore the file from the dataset's source")
    _check_videos(root, info, features)
    _check_required(root, features)
    if not info.get("data_path"):
        raise fail(root, f"{INFO_PATH} has no data_path template",
                   f"Add \"data_path\": \"{DATA_PATH}\"")
    return info


def _load_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.is_file():
        raise fail(root, f"{INFO_PATH} is missing, so this is not a LeRobotDataset folder",
                   "Pass the dataset root, the folder that holds meta/ and data/")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fail(root, f"{INFO_PATH} is not valid JSON ({e})",
                   "Restore the file from the dataset's source") from None


def _check_version(root: Path, version: Any) -> None:
    if version == CODEBASE_VERSION:
        return
    fix = ("Convert it first with LeRobot: python -m "
           "lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<repo> --root=<folder> "
           "--push-to-hub=false" if str(version).startswith("v2") else
           "Only LeRobotDataset v3.0 is supported")
    raise fail(root, f"codebase_version is {version!r}, expected {CODEBASE_VERSION!r}", fix)


def _check_videos(root: Path, info: dict[str, Any], features: dict[str, Any]) -> None:
    """Video features need a video_path template that says where each camera's files are."""
    videos = sorted(k for k, ft in features.items() if ft.get("dtype") == "video")
    template = info.get("video_path")
    if videos and (not isinstance(template, str) or "{video_key}" not in template):
        raise fail(root, f"features {videos} are videos but {INFO_PATH} has video_path "
                   f"{template!r}", f"Add \"video_path\": \"{VIDEO_PATH}\" (LeRobot's layout)")


def _check_required(root: Path, features: dict[str, Any]) -> None:
    missing = [k for k in (STATE, ACTION, "episode_index", "frame_index") if k not in features]
    if missing:
        raise fail(root, f"required feature(s) {missing} are missing from {INFO_PATH}",
                   "The store needs observation.state and action per frame; datasets without "
                   "them cannot be imported")
    for k in (STATE, ACTION):
        if len(features[k].get("shape", [])) != 1:
            raise fail(root, f"feature {k} has shape {features[k].get('shape')}, expected one "
                       "dimension", "Flatten it to a vector before importing")

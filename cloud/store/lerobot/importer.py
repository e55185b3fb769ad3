"""Import a LeRobotDataset v3.0 folder (image or video mode) into the episode store.

Accepts any v3.0 dataset with ``observation.state`` and ``action``: cameras are the
``observation.images.<cam>`` (or ``observation.image``) features, PNG/JPEG in the data files
(image mode) or frames of MP4 files decoded with PyAV (video mode, LeRobot's default); tokens
are computed from the action (clipped to [-1, 1], 256 bins) when the dataset has none;
intervention defaults to False. Each episode becomes
``<robot_id>/<dataset-name>-<episode_index:06d>``, so importing the same folder twice writes
nothing the second time.

Success, by the first rule that applies (``SUCCESS_RULES``; the summary counts them and an
imported episode's outcome reason names its rule): our ``success`` column of the episodes
table; a ``next.success`` feature true on some frame; a last frame with ``next.reward > 0``
(what LeRobot's HIL-SERL recorder leaves, with ``next.done``); else a failure.

Timestamps: the recorded ``complementary_info.timestamp_measured`` of our exports (exact);
else ``vlac/start_time`` plus the float32 ``timestamp`` (older exports); else ``timestamp``.
Not carried over: ``logprob`` and ``policy_version`` (an import sets 0 and -1: the steps did not
come from one of our policies).

The folder is read data file by data file (LeRobot never splits an episode across files), and
each file only when one of its episodes is not yet in the store.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlac.cloud.store.episodes import EpisodeStore
from vlac.cloud.store.lerobot.format import (
    ACTION,
    EPISODES_DIR,
    IMAGE_PREFIX,
    INFO_PATH,
    INTERVENTION,
    MEASURED_TIME,
    REWARD,
    STATE,
    SUCCESS_FEATURE,
    TASKS_PATH,
    TOKENS,
    LeRobotFormatError,
    fail,
    lerobot_episode_id,
    read_info,
)
from vlac.cloud.store.lerobot.video import read_frames
from vlac.cloud.store.parquet import arrow_to_numpy
from vlac.shared.episode import StepColumns
from vlac.shared.tokenizer import ActionTokenizer
from vlac.shared.wire import is_valid_id

_INTERVENTION_KEYS = (INTERVENTION, "complementary_info.intervention", "is_intervention",
                      "intervention")
# How an episode's success was decided, in the order tried: rule -> what the reason says.
SUCCESS_RULES = {
    "success": "from the episodes table's success column",
    SUCCESS_FEATURE: f"from {SUCCESS_FEATURE} on any frame",
    REWARD: f"from {REWARD} > 0 on the last frame",
    "none": f"no {SUCCESS_FEATURE} or {REWARD} in the dataset",
}

log = logging.getLogger(__name__)


def import_lerobot(in_dir: str | Path, store: EpisodeStore, *, robot_id: str = "lerobot",
                   source: str = "import", chunk_steps: int = 64) -> dict[str, Any]:
    """Write every episode of a LeRobotDataset v3.0 folder (image or video mode) into ``store``.

    Episodes become ``robot_id/<dataset-name>-<episode_index:06d>`` (see the module docstring
    for how fields map); one already complete in the store is skipped, so importing the same
    folder again is a no-op. Raises LeRobotFormatError naming the problem and the fix for a
    folder it cannot read. Returns a summary; ``success_rules`` counts the imported episodes
    by the rule that decided their success (keys of SUCCESS_RULES).
    """
    root = Path(in_dir)
    if not is_valid_id(robot_id):
        raise ValueError(f"robot_id {robot_id!r} is not a valid id: use letters, digits, '_', "
                         "'.', '-' (at most 64, starting with a letter or digit)")
    ds = _Dataset.open(root)
    imported: list[str] = []
    skipped: list[str] = []
    rules: Counter[str] = Counter()
    frames = 0
    for path, eps in _by_data_file(ds).items():
        if not path.is_file():
            raise fail(root, f"data file {path.relative_to(root)} is missing (episodes "
                       f"{[e['episode_index'] for e in eps]} live there)",
                       "The download is incomplete: fetch the dataset again")
        todo = [e for e in eps if not store.is_complete(robot_id, ds.episode_id(e))]
        skipped += [ds.episode_id(e) for e in eps if e not in todo]
        if not todo:
            continue
        data = _read_data_file(ds, path)
        for ep in todo:
            ep_id, n, rule = _import_episode(ds, data, ep, store, robot_id, source, chunk_steps)
            imported.append(ep_id)
            rules[rule] += 1
            frames += n
    for rule, count in rules.items():  # `vlac demos import` prints these from the summary
        log.debug("%s: success of %d imported episode(s) %s", ds.name, count,
                  SUCCESS_RULES[rule])
    return {"dataset": ds.name, "robot_id": robot_id, "episodes": len(ds.episodes),
            "imported": len(imported), "skipped": len(skipped), "frames": frames,
            "episode_ids": imported + skipped, "success_rules": dict(rules)}


@dataclass
class _Dataset:
    """What an import needs of a dataset folder, read and checked once."""

    root: Path
    name: str  # the folder's name: episode ids are <name>-<episode_index:06d>
    info: dict[str, Any]
    features: dict[str, dict[str, Any]]
    tasks: dict[int, str]  # task_index -> task
    episodes: list[dict[str, Any]]  # rows of the episodes table, by episode_index
    cams: dict[str, str]  # image or video feature -> camera name
    videos: set[str]  # the features of ``cams`` whose frames are in MP4 files
    tokens_key: str | None
    interv_key: str | None
    tokenizer: ActionTokenizer  # for datasets without tokens

    @classmethod
    def open(cls, root: Path) -> _Dataset:
        info = read_info(root)
        features: dict[str, dict[str, Any]] = info["features"]
        tasks = _read_tasks(root)
        episodes = _read_episodes(root)
        if info.get("total_episodes") is not None and info["total_episodes"] != len(episodes):
            raise fail(root, f"{INFO_PATH} says {info['total_episodes']} episodes but "
                       f"{EPISODES_DIR} lists {len(episodes)}", "The download is incomplete: "
                       "fetch the dataset again")
        cams = {k: k[len(IMAGE_PREFIX):] if k.startswith(IMAGE_PREFIX) else k.split(".")[-1]
                for k, ft in features.items() if ft.get("dtype") in ("image", "video")}
        action_dim = int(features[ACTION]["shape"][0])
        return cls(
            root=root, name=root.resolve().name, info=info, features=features, tasks=tasks,
            episodes=episodes, cams=cams,
            videos={k for k in cams if features[k]["dtype"] == "video"},
            tokens_key=next((k for k in (TOKENS, "action_tokens") if k in features), None),
            interv_key=next((k for k in _INTERVENTION_KEYS if k in features), None),
            tokenizer=ActionTokenizer([-1.0] * action_dim, [1.0] * action_dim, 256))

    @property
    def fps(self) -> float:
        return self.info.get("fps") or 0

    def episode_id(self, ep: dict[str, Any]) -> str:
        return lerobot_episode_id(self.name, ep["episode_index"])


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.is_file():
        raise fail(root, f"{TASKS_PATH} is missing", "Restore it from the dataset's source")
    df = pd.read_parquet(path)
    if "task_index" not in df.columns:
        raise fail(root, f"{TASKS_PATH} has no task_index column",
                   "Restore it from the dataset's source")
    names = df["task"] if "task" in df.columns else pd.Series(df.index, index=df.index)
    return {int(i): str(t) for i, t in zip(df["task_index"], names, strict=True)}


def _read_episodes(root: Path) -> list[dict[str, Any]]:
    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise fail(root, f"no episode metadata ({EPISODES_DIR}/chunk-*/file-*.parquet)",
                   "Restore meta/episodes/ from the dataset's source")
    rows = []
    for f in files:
        names = [n for n in pq.read_schema(f).names if not n.startswith("stats/")]
        rows += pq.read_table(f, columns=names).to_pylist()
    if any("episode_index" not in r for r in rows):
        raise fail(root, f"{EPISODES_DIR} has no episode_index column",
                   "Restore meta/episodes/ from the dataset's source")
    return sorted(rows, key=lambda r: r["episode_index"])


def _by_data_file(ds: _Dataset) -> dict[Path, list[dict[str, Any]]]:
    """The episodes grouped by the data file that holds them, in episode order."""
    by_file: dict[Path, list[dict[str, Any]]] = {}
    for ep in ds.episodes:
        if "data/chunk_index" in ep and "data/file_index" in ep:
            rel = ds.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                              file_index=ep["data/file_index"])
            by_file.setdefault(ds.root / rel, []).append(ep)
        else:
            raise fail(ds.root, f"episode {ep['episode_index']} has no data/chunk_index, "
                       "data/file_index in its metadata", "Restore meta/episodes/ from the "
                       "dataset's source")
    return by_file


# --------------------------------------------------------------------------- one data file
@dataclass
class _DataFile:
    """One data file's frames, sorted by (episode_index, frame_index)."""

    path: Path  # relative to the dataset root, for messages
    episode: np.ndarray  # episode_index of each row
    numeric: dict[str, np.ndarray]  # every non-image column: (T,) or (T, D)
    images: dict[str, list[bytes | None]]  # image feature -> PNG/JPEG bytes of each row (no
    # video features: their frames are in the MP4 files)


def _read_data_file(ds: _Dataset, path: Path) -> _DataFile:
    wanted = [k for k in ds.features if ds.features[k].get("dtype") != "video"]
    present = set(pq.read_schema(path).names)
    embedded = [k for k in ds.cams if k not in ds.videos]
    lost = [k for k in (STATE, ACTION, "episode_index", "frame_index", *embedded)
            if k not in present]
    if lost:
        raise fail(ds.root, f"data file {path.relative_to(ds.root)} lacks column(s) {lost} "
                   f"declared in {INFO_PATH}", "Restore the file from the dataset's source")
    table = pq.read_table(path, columns=[k for k in wanted if k in present])
    ep_col = arrow_to_numpy(table.column("episode_index")).reshape(-1)
    order = np.lexsort((arrow_to_numpy(table.column("frame_index")).reshape(-1), ep_col))
    table = table.take(pa.array(order))
    return _DataFile(
        path=path.relative_to(ds.root), episode=ep_col[order],
        numeric={k: arrow_to_numpy(table.column(k)) for k in table.column_names
                 if k not in ds.cams},
        images={k: table.column(k).combine_chunks().field("bytes").to_pylist() for k in embedded})


def _import_episode(ds: _Dataset, data: _DataFile, ep: dict[str, Any], store: EpisodeStore,
                    robot_id: str, source: str, chunk_steps: int) -> tuple[str, int, str]:
    """Write one episode of the data file into the store; returns its id, frame count and
    the success rule that applied."""
    idx = int(ep["episode_index"])
    where = f"{data.path} episode {idx}"
    a, b = _episode_span(ds, data, ep, where)
    steps = _steps_from_rows(ds, data, a, b, ep.get("vlac/start_time"), where)
    steps.images.update(_video_frames(ds, data, ep, a, b, where))
    task_idx = int(data.numeric["task_index"][a]) if "task_index" in data.numeric else None
    task = ds.tasks.get(task_idx) if task_idx is not None else None
    if task is None:
        task = (ep.get("tasks") or [""])[0]
    success, rule = _success_of(ep, data.numeric, a, b)
    # ours keep their reason; for others, say how success was decided
    reason = ep.get("reason") or (f"{'success' if success else 'failure'} "
                                  f"({SUCCESS_RULES[rule]})")
    ep_id = lerobot_episode_id(ds.name, idx)
    store.write_episode(robot_id, ep_id, task, steps, success, reason,
                        chunk_steps=chunk_steps, source=source,
                        task_id=str(ep.get("vlac/task_id") or "")[:100])
    return ep_id, b - a, rule


def _episode_span(ds: _Dataset, data: _DataFile, ep: dict[str, Any],
                  where: str) -> tuple[int, int]:
    """The episode's rows [a, b) of the sorted data file, checked against its metadata."""
    found = np.flatnonzero(data.episode == int(ep["episode_index"]))
    if len(found) == 0:
        raise fail(ds.root, f"{where}: no frames in the data file its metadata points to",
                   "The dataset is inconsistent: fetch it again")
    if ep.get("length") is not None and int(ep["length"]) != len(found):
        raise fail(ds.root, f"{where}: {len(found)} frames in the data file but its "
                   f"metadata says length {ep['length']}", "The dataset is "
                   "inconsistent: fetch it again")
    return int(found[0]), int(found[-1]) + 1


def _success_of(ep: dict[str, Any], numeric: dict[str, np.ndarray], a: int,
                b: int) -> tuple[bool, str]:
    """The episode's success and the rule (a key of SUCCESS_RULES) that decided it."""
    if ep.get("success") is not None:
        return bool(ep["success"]), "success"
    if SUCCESS_FEATURE in numeric:
        return bool(np.asarray(numeric[SUCCESS_FEATURE][a:b]).astype(bool).any()), \
            SUCCESS_FEATURE
    if REWARD in numeric:
        return bool(np.asarray(numeric[REWARD][b - 1], np.float64).reshape(-1)[0] > 0), REWARD
    return False, "none"


def _video_frames(ds: _Dataset, data: _DataFile, ep: dict[str, Any], a: int, b: int,
                  where: str) -> dict[str, np.ndarray]:
    """The episode's frames of each video feature (camera -> (T, H, W, 3)), found as
    LeRobot finds them: at the episode's from_timestamp plus each frame's timestamp."""
    if not ds.videos:
        return {}
    if "timestamp" in data.numeric:
        ts = np.asarray(data.numeric["timestamp"][a:b], np.float64).reshape(b - a)
    else:
        ts = np.arange(b - a, dtype=np.float64) / (ds.fps or 1)
    out = {}
    for key in sorted(ds.videos):
        cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
        if any(ep.get(c) is None for c in cols):
            raise fail(ds.root, f"{where}: the episodes table lacks {cols}, which say where "
                       f"its {key} frames are", "Restore meta/episodes/ from the dataset's "
                       "source")
        rel = ds.info["video_path"].format(video_key=key, chunk_index=int(ep[cols[0]]),
                                           file_index=int(ep[cols[1]]))
        out[ds.cams[key]] = read_frames(ds.root, rel, float(ep[cols[2]]), ts, f"{where} {key}")
    return out


def _steps_from_rows(ds: _Dataset, data: _DataFile, a: int, b: int,
                     start_time: float | None, where: str) -> StepColumns:
    n = b - a
    numeric = data.numeric
    action = np.ascontiguousarray(numeric[ACTION][a:b], np.float32).reshape(n, -1)
    if not np.isfinite(action).all():
        raise LeRobotFormatError(f"{where}: action contains NaN or infinity")
    tokens_key = ds.tokens_key
    if tokens_key is not None and numeric[tokens_key].reshape(len(numeric[tokens_key]), -1)\
            .shape[1] == action.shape[1]:
        tokens = np.ascontiguousarray(numeric[tokens_key][a:b], np.int32).reshape(n, -1)
    else:
        tokens = ds.tokenizer.encode(action)
    if ds.interv_key is not None:
        interv = (np.asarray(numeric[ds.interv_key][a:b]).reshape(n, -1)[:, 0]
                  .astype(np.float64) > 0.5)
    else:
        interv = np.zeros(n, bool)
    if MEASURED_TIME in numeric:  # ours: the recorded times, exactly
        ts = np.asarray(numeric[MEASURED_TIME][a:b], np.float64).reshape(n)
    else:
        if "timestamp" in numeric:
            rel = np.asarray(numeric["timestamp"][a:b], np.float64).reshape(n)
        else:
            rel = np.arange(n, dtype=np.float64) / (ds.fps or 1)
        ts = rel + (float(start_time) if start_time is not None else 0.0)
    imgs = {ds.cams[key]: np.stack([_decode(d, f"{where} {key}") for d in frames[a:b]])
            for key, frames in data.images.items()}
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


def _decode(data: bytes | None, where: str) -> np.ndarray:
    if data is None:
        raise LeRobotFormatError(f"{where}: the frame has no embedded image bytes (only a "
                                 "path); re-save the dataset with images embedded")
    img = Image.open(io.BytesIO(data))
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)

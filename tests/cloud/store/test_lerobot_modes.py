"""LeRobot datasets beyond the plain image-mode round trip: LeRobot's timestamps and the
recorded ones, fps from the step interval, success of datasets without our columns (HIL-SERL's
recorder), video mode both ways, a damaged video, and LeRobot itself where it is installed."""

import io
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.cloud.store.test_lerobot import EPISODES, N_FRAMES, episodes_table, make_store
from vlac.cloud.store.episodes import EpisodeStore
from vlac.cloud.store.lerobot import LeRobotFormatError, export_lerobot, import_lerobot
from vlac.shared.episode import synthetic_steps
from vlac.shared.wire import DEFAULT_SPEC

NON_IMAGE = ("proprio", "action", "action_tokens", "intervention", "timestamp", "logprob",
             "policy_version")
VIDEO_KEY = "observation.images.corner"
VIDEO_FILE = f"videos/{VIDEO_KEY}/chunk-000/file-000.mp4"
MAX_MEAN_ABS_ERROR = 8.0  # of 255, per pixel: SVT-AV1/x264 at crf 30 measured 3.8-3.9 here


def store_with_interval(root: Path, interval: float, *, n: int = 12, episodes: int = 2,
                        jitter: float = 0.1, pause: float = 0.0) -> EpisodeStore:
    """Episodes whose steps are ``interval`` apart, each off by up to ``jitter`` of it, as
    a rate-limited robot loop's measured wall-clock times are; ``pause`` seconds between the
    two halves of each (an operator's reset)."""
    store = EpisodeStore(root, fsync=False)
    rng = np.random.default_rng(0)
    for e in range(episodes):
        steps = synthetic_steps(DEFAULT_SPEC, n, seed=e)
        ideal = 1.7e9 + 50 * e + interval * np.arange(n) + pause * (np.arange(n) >= n // 2)
        steps.timestamp = ideal + rng.uniform(-jitter, jitter, n) * interval
        store.write_episode("r1", f"e{e}", "push the block", steps, True, "success")
    return store


def data_frame(ds: Path, drop_images: bool = True) -> pd.DataFrame:
    tables = [pq.read_table(f) for f in sorted((ds / "data").glob("*/*.parquet"))]
    table = pa.concat_tables(tables)
    if drop_images:
        table = table.drop_columns([c for c in table.column_names if "images" in c])
    return table.to_pandas()


# --------------------------------------------------------------------------- timestamps
def test_timestamps_are_frame_index_over_fps_and_the_measured_ones_survive(tmp_path):
    store = store_with_interval(tmp_path / "store", 0.04)
    summary = export_lerobot(store, tmp_path / "ds")  # fps from the step interval
    assert summary["fps"] == 25 and summary["warnings"] == []
    assert json.loads((tmp_path / "ds/meta/info.json").read_text())["fps"] == 25
    data = data_frame(tmp_path / "ds")
    for e in range(2):
        mine = data[data["episode_index"] == e]
        np.testing.assert_array_equal(mine["timestamp"].to_numpy(),
                                      (np.arange(12) / 25).astype(np.float32))
        recorded = store.load_episode("r1", f"e{e}").steps.timestamp
        np.testing.assert_array_equal(
            mine["complementary_info.timestamp_measured"].to_numpy(), recorded)
    fresh = EpisodeStore(tmp_path / "fresh", fsync=False)
    import_lerobot(tmp_path / "ds", fresh)
    for e in range(2):
        np.testing.assert_array_equal(fresh.load_episode("lerobot", f"ds-{e:06d}").steps.timestamp,
                                      store.load_episode("r1", f"e{e}").steps.timestamp)


@pytest.mark.parametrize(("interval", "fps"), [(0.1, 10), (0.04, 25), (1 / 30, 30), (0.2, 5),
                                               (1 / 15.2, 15), (2.0, 1)])
def test_fps_is_taken_from_the_recorded_step_interval(tmp_path, interval, fps):
    store = store_with_interval(tmp_path / "store", interval, n=30, episodes=1, pause=3.0)
    summary = export_lerobot(store, tmp_path / "ds")
    assert summary["fps"] == fps
    assert json.loads((tmp_path / "ds/meta/info.json").read_text())["fps"] == fps


def test_fps_falls_back_with_a_warning_when_the_steps_cannot_tell(tmp_path):
    store = EpisodeStore(tmp_path / "store", fsync=False)
    store.write_episode("r1", "e1", "push", synthetic_steps(DEFAULT_SPEC, 1), True)
    summary = export_lerobot(store, tmp_path / "ds")
    assert summary["fps"] == 10
    assert "control rate is unknown" in summary["warnings"][0]
    assert "--fps" in summary["warnings"][0]
    assert export_lerobot(store, tmp_path / "ds30", fps=30)["fps"] == 30  # as asked


# --------------------------------------------------------------------------- success
def write_hil_serl_dataset(root: Path, rewards: list[list[float]],
                           success: list[list[bool]] | None = None,
                           with_reward: bool = True) -> None:
    """A dataset as LeRobot's gym_manipulator/HIL-SERL recorder leaves it, written with
    pyarrow alone: next.reward and next.done per frame (next.success only when given), none
    of our extra columns, 3-dim state and action, one 8x8 camera."""
    feats = {"observation.images.front": {"dtype": "image", "shape": [8, 8, 3],
                                          "names": ["height", "width", "channels"]},
             "observation.state": {"dtype": "float32", "shape": [3], "names": None},
             "action": {"dtype": "float32", "shape": [3], "names": None},
             "next.done": {"dtype": "bool", "shape": [1], "names": None},
             "complementary_info.discrete_penalty": {"dtype": "float32", "shape": [1],
                                                     "names": None}}
    if with_reward:
        feats["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    if success is not None:
        feats["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    for k in ("timestamp",):
        feats[k] = {"dtype": "float32", "shape": [1], "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        feats[k] = {"dtype": "int64", "shape": [1], "names": None}
    rows, eps, index = [], [], 0
    rng = np.random.default_rng(1)
    for e, ep_rewards in enumerate(rewards):
        n = len(ep_rewards)
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(buf, format="PNG")
            row = {"observation.images.front": {"bytes": buf.getvalue(), "path": None},
                   "observation.state": rng.normal(size=3).astype(np.float32).tolist(),
                   "action": rng.uniform(-1, 1, 3).astype(np.float32).tolist(),
                   "next.done": i == n - 1, "complementary_info.discrete_penalty": 0.0,
                   "timestamp": i / 10, "frame_index": i, "episode_index": e, "index": index,
                   "task_index": 0}
            if with_reward:
                row["next.reward"] = ep_rewards[i]
            if success is not None:
                row["next.success"] = success[e][i]
            rows.append(row)
            index += 1
        eps.append({"episode_index": e, "tasks": ["pick the cube"], "length": n,
                    "data/chunk_index": 0, "data/file_index": 0,
                    "dataset_from_index": index - n, "dataset_to_index": index,
                    "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data/chunk-000/file-000.parquet")
    pq.write_table(pa.Table.from_pylist(eps), root / "meta/episodes/chunk-000/file-000.parquet")
    pd.DataFrame({"task_index": [0]}, index=pd.Index(["pick the cube"], name="task")) \
        .to_parquet(root / "meta/tasks.parquet")
    info = {"codebase_version": "v3.0", "robot_type": "so101", "fps": 10,
            "total_episodes": len(rewards), "total_frames": index, "total_tasks": 1,
            "chunks_size": 1000, "data_path": "data/chunk-{chunk_index:03d}/"
            "file-{file_index:03d}.parquet", "video_path": None, "features": feats}
    (root / "meta/info.json").write_text(json.dumps(info))


@pytest.mark.parametrize(("case", "rule", "expected"), [
    ("reward", "next.reward", [True, False]),
    ("success", "next.success", [True, False]),
    ("neither", "none", [False, False]),
])
def test_success_of_a_dataset_without_our_columns(tmp_path, case, rule, expected):
    ds = tmp_path / "hil"
    if case == "reward":  # the last frame's reward decides: an earlier one does not
        write_hil_serl_dataset(ds, [[0, 0, 0, 1.0], [0, 1.0, 0, 0, 0]])
    elif case == "success":  # next.success wins over next.reward, on any frame
        write_hil_serl_dataset(ds, [[0, 0, 0, 0], [0, 0, 0, 1.0, 1.0]],
                               success=[[False, True, False, False], [False] * 5])
    else:
        write_hil_serl_dataset(ds, [[0] * 4, [0] * 5], with_reward=False)
    store = EpisodeStore(tmp_path / "store", fsync=False)
    summary = import_lerobot(ds, store)
    assert summary["imported"] == 2 and summary["success_rules"] == {rule: 2}
    for e, success in enumerate(expected):
        got = store.load_episode("lerobot", f"hil-{e:06d}")
        assert got.outcome.success is success
        assert got.outcome.reason.startswith("success" if success else "failure")
        assert (rule if rule != "none" else "no next.success or next.reward") \
            in got.outcome.reason
        assert got.steps.images["front"].shape == (len(got), 8, 8, 3)


# --------------------------------------------------------------------------- video mode
@pytest.fixture(scope="module")
def video_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lerobot-video")
    store = make_store(tmp / "store")
    summary = export_lerobot(store, tmp / "vds", mode="video")
    return store, tmp / "vds", summary


def test_video_export_follows_lerobots_layout(video_export):
    _, ds, summary = video_export
    assert summary["mode"] == "video" and summary["video_files"] == [VIDEO_FILE]
    info = json.loads((ds / "meta/info.json").read_text())
    assert info["video_path"] == ("videos/{video_key}/chunk-{chunk_index:03d}/"
                                  "file-{file_index:03d}.mp4")
    ft = info["features"][VIDEO_KEY]
    assert ft["dtype"] == "video" and ft["shape"] == [128, 128, 3]
    assert ft["names"] == ["height", "width", "channels"]
    vi = ft["info"]
    assert vi["video.codec"] in ("av1", "h264") and vi["video.pix_fmt"] == "yuv420p"
    assert (vi["video.height"], vi["video.width"], vi["video.fps"]) == (128, 128, 10)
    assert vi["video.channels"] == 3 and vi["has_audio"] is False
    for f in (ds / "data").glob("*/*.parquet"):  # LeRobot keeps videos out of the data files
        assert VIDEO_KEY not in pq.read_schema(f).names
    stats = json.loads((ds / "meta/stats.json").read_text())
    assert np.array(stats[VIDEO_KEY]["mean"]).shape == (3, 1, 1)
    eps = episodes_table(ds)
    starts = np.cumsum([0] + [e[3] for e in EPISODES]) / 10
    np.testing.assert_allclose(eps[f"videos/{VIDEO_KEY}/from_timestamp"], starts[:-1])
    np.testing.assert_allclose(eps[f"videos/{VIDEO_KEY}/to_timestamp"], starts[1:])
    assert set(eps[f"videos/{VIDEO_KEY}/chunk_index"]) == {0}
    assert set(eps[f"videos/{VIDEO_KEY}/file_index"]) == {0}
    with av.open(str(ds / VIDEO_FILE)) as c:  # one frame every 1/fps, episodes back to back
        times = [float(f.pts * f.time_base) for f in c.decode(c.streams.video[0])]
    np.testing.assert_allclose(times, np.arange(N_FRAMES) / 10, atol=1e-6)


def assert_same_but_pixels(got, orig) -> float:
    """Everything but the pixels exactly; returns the pixels' mean absolute error."""
    assert (got.task, got.outcome.success, got.outcome.reason) == (
        orig.task, orig.outcome.success, orig.outcome.reason)
    for f in NON_IMAGE[:5]:
        np.testing.assert_array_equal(getattr(got.steps, f), getattr(orig.steps, f), f)
    a, b = got.steps.images["corner"], orig.steps.images["corner"]
    assert a.shape == b.shape and a.dtype == np.uint8
    return float(np.abs(a.astype(np.int16) - b).mean())


def test_video_round_trip(video_export, tmp_path):
    store, ds, _ = video_export
    fresh = EpisodeStore(tmp_path / "fresh", fsync=False)
    summary = import_lerobot(ds, fresh)
    assert (summary["imported"], summary["frames"]) == (3, N_FRAMES)
    for i, (robot, ep_id, *_rest) in enumerate(EPISODES):
        mae = assert_same_but_pixels(fresh.load_episode("lerobot", f"vds-{i:06d}"),
                                     store.load_episode(robot, ep_id))
        assert mae < MAX_MEAN_ABS_ERROR, (i, mae)


def test_video_files_roll_over_and_still_import(video_export, tmp_path):
    store, _, _ = video_export
    summary = export_lerobot(store, tmp_path / "small", mode="video", video_file_mb=0.01)
    assert len(summary["video_files"]) == 3  # each episode past ~10 KB of video
    eps = episodes_table(tmp_path / "small")
    assert list(eps[f"videos/{VIDEO_KEY}/file_index"]) == [0, 1, 2]
    assert list(eps[f"videos/{VIDEO_KEY}/from_timestamp"]) == [0.0, 0.0, 0.0]
    fresh = EpisodeStore(tmp_path / "fresh", fsync=False)
    assert import_lerobot(tmp_path / "small", fresh)["imported"] == 3
    for i, (robot, ep_id, *_rest) in enumerate(EPISODES):
        mae = assert_same_but_pixels(fresh.load_episode("lerobot", f"small-{i:06d}"),
                                     store.load_episode(robot, ep_id))
        assert mae < MAX_MEAN_ABS_ERROR


def test_a_damaged_video_is_named_with_the_fix(video_export, tmp_path):
    _, ds, _ = video_export
    store = EpisodeStore(tmp_path / "store", fsync=False)
    cut = tmp_path / "cut"
    shutil.copytree(ds, cut)
    data = (cut / VIDEO_FILE).read_bytes()
    (cut / VIDEO_FILE).write_bytes(data[:len(data) // 2])  # a download that stopped halfway
    with pytest.raises(LeRobotFormatError, match=rf"{VIDEO_FILE}.*fetch the dataset again"):
        import_lerobot(cut, store)
    gone = tmp_path / "gone"
    shutil.copytree(ds, gone)
    (gone / VIDEO_FILE).unlink()
    with pytest.raises(LeRobotFormatError, match=rf"{VIDEO_FILE} is missing.*fetch"):
        import_lerobot(gone, store)
    assert store.list_episodes() == []


def test_video_mode_refuses_odd_frame_sizes(tmp_path):
    store = EpisodeStore(tmp_path / "store", fsync=False)
    steps = synthetic_steps(DEFAULT_SPEC, 3)
    steps.images["corner"] = steps.images["corner"][:, :127]
    store.write_episode("r1", "e1", "push", steps, True)
    with pytest.raises(ValueError, match=r"even height and width.*--mode image"):
        export_lerobot(store, tmp_path / "ds", mode="video")
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- LeRobot itself
def test_lerobots_own_reader_takes_both_modes(tmp_path, monkeypatch):
    """Runs only where lerobot is importable: it cannot share this project's environment."""
    lerobot_dataset = pytest.importorskip(
        "lerobot.datasets.lerobot_dataset",
        reason="lerobot is not installed here; it needs an environment of its own: "
        "pip install -e '.[cloud,dev]' there, then lerobot 0.4.4's requirements minus torch, "
        "torchvision and torchcodec, and pip install --no-deps lerobot==0.4.4 "
        "torchvision==0.28.0 torchcodec==0.13.0 (../shared/FACTS.md, LeRobot datasets)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = make_store(tmp_path / "store")
    orig = store.load_episode("r1", "e2").steps  # the second episode: frames 12..26
    for mode, tolerance in (("image", 1e-6), ("video", MAX_MEAN_ABS_ERROR / 255)):
        export_lerobot(store, tmp_path / mode, mode=mode)
        ds = lerobot_dataset.LeRobotDataset(
            f"local/{mode}", root=tmp_path / mode,
            delta_timestamps={VIDEO_KEY: [-0.1, 0.0], "action": [0.0, 0.1]})
        assert (ds.fps, ds.num_episodes, ds.num_frames) == (10, 3, N_FRAMES)
        item = ds[12 + 5]
        assert int(item["episode_index"]) == 1 and int(item["frame_index"]) == 5
        np.testing.assert_array_equal(item["action"].numpy(), orig.action[5:7])
        frames = item[VIDEO_KEY].permute(0, 2, 3, 1).numpy()  # (2, H, W, C) in [0, 1]
        err = np.abs(frames - orig.images["corner"][4:6] / 255.0).mean()
        assert err < tolerance, (mode, err)

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from rich.console import Console

from vlac.cloud.store.episodes import EpisodeStore
from vlac.cloud.store.lerobot import (
    LeRobotExportConfig,
    LeRobotFormatError,
    LeRobotImportConfig,
    export_lerobot,
    export_main,
    import_lerobot,
    import_main,
    lerobot_episode_id,
)
from vlac.shared.config import ConfigError
from vlac.shared.episode import synthetic_steps
from vlac.shared.tokenizer import ActionTokenizer
from vlac.shared.wire import DEFAULT_SPEC, is_valid_id

# (robot, episode, task, steps, seed, success, reason, source)
EPISODES = [
    ("r1", "e1", "open the drawer", 12, 1, True, "success", "policy"),
    ("r1", "e2", "close the drawer", 15, 2, False, "timeout", "demo"),
    ("r2", "e3", "open the drawer", 10, 3, True, "success", "policy"),
]
N_FRAMES = sum(e[3] for e in EPISODES)
INFO_KEYS = {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
             "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
             "data_path", "video_path", "features"}
STAT_KEYS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}


def make_store(root: Path) -> EpisodeStore:
    store = EpisodeStore(root, fsync=False)
    for robot, ep, task, n, seed, success, reason, source in EPISODES:
        steps = synthetic_steps(DEFAULT_SPEC, n, seed=seed, t0=1.7e9 + 100 * seed)
        if seed == 1:
            steps.intervention[3:6] = True  # an operator took over for three steps
        store.write_episode(robot, ep, task, steps, success, reason, chunk_steps=8,
                            source=source)
    return store


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lerobot")
    store = make_store(tmp / "store")
    summary = export_lerobot(store, tmp / "ds", fps=10, robot_type="sawyer")
    return store, tmp / "ds", summary


def episodes_table(ds: Path) -> pd.DataFrame:
    files = sorted((ds / "meta/episodes").glob("*/*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def data_table(ds: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((ds / "data").glob("*/*.parquet"))])


def test_every_file_is_readable_and_info_matches(exported):
    _, ds, summary = exported
    files = sorted(p for p in ds.rglob("*") if p.is_file())
    assert {p.suffix for p in files} == {".json", ".parquet"}
    for p in files:
        if p.suffix == ".parquet":
            pq.read_table(p)
        else:
            json.loads(p.read_text())
    info = json.loads((ds / "meta/info.json").read_text())
    assert set(info) == INFO_KEYS
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "sawyer"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, N_FRAMES, 2)
    assert info["fps"] == 10 and info["chunks_size"] == 1000
    assert info["data_files_size_in_mb"] == 100 and info["video_path"] is None
    assert info["splits"] == {"train": "0:3"}
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    f = info["features"]
    assert f["observation.images.corner"] == {"dtype": "image", "shape": [128, 128, 3],
                                              "names": ["height", "width", "channels"]}
    assert f["observation.state"]["dtype"] == "float32" and f["observation.state"]["shape"] == [4]
    assert f["action"]["dtype"] == "float32" and f["action"]["shape"] == [4]
    assert f["complementary_info.action_tokens"]["dtype"] == "int32"
    assert f["complementary_info.action_tokens"]["shape"] == [4]
    assert f["complementary_info.is_intervention"] == {"dtype": "bool", "shape": [1],
                                                       "names": None}
    assert f["next.done"]["dtype"] == "bool" and f["next.reward"]["dtype"] == "float32"
    assert f["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    assert f["complementary_info.timestamp_measured"] == {"dtype": "float64", "shape": [1],
                                                          "names": None}
    for k in ("frame_index", "episode_index", "index", "task_index"):
        assert f[k] == {"dtype": "int64", "shape": [1], "names": None}
    # no feature key may start with "action" except action itself (LeRobot types those as
    # policy outputs) and none may contain "/" (LeRobot refuses those)
    assert [k for k in f if k.startswith("action")] == ["action"]
    assert not any("/" in k for k in f)
    # the templates resolve to the files that exist, and data columns are the features
    eps = episodes_table(ds)
    paths = {info["data_path"].format(chunk_index=c, file_index=i)
             for c, i in zip(eps["data/chunk_index"], eps["data/file_index"], strict=True)}
    assert paths == {str(p.relative_to(ds)) for p in (ds / "data").glob("*/*.parquet")}
    assert sorted(paths) == summary["data_files"]
    for p in paths:
        assert pq.read_schema(ds / p).names == list(f)
    assert (ds / "meta/episodes/chunk-000/file-000.parquet").is_file()
    assert summary["episodes"] == 3 and summary["frames"] == N_FRAMES
    assert summary["warnings"] == [] and summary["mode"] == "image"
    assert summary["video_files"] == []


def test_data_schema_and_png_pixels(exported):
    store, ds, _ = exported
    schema = pq.read_schema(ds / "data/chunk-000/file-000.parquet")
    img = schema.field("observation.images.corner").type
    assert pa.types.is_struct(img)
    assert [(img.field(i).name, img.field(i).type) for i in range(img.num_fields)] == [
        ("bytes", pa.binary()), ("path", pa.string())]
    for name, value_type in (("observation.state", pa.float32()), ("action", pa.float32()),
                             ("complementary_info.action_tokens", pa.int32())):
        t = schema.field(name).type
        assert pa.types.is_fixed_size_list(t) and t.list_size == 4 and t.value_type == value_type
    assert schema.field("timestamp").type == pa.float32()
    assert schema.field("next.done").type == pa.bool_()
    assert schema.field("complementary_info.is_intervention").type == pa.bool_()
    assert schema.field("index").type == pa.int64()
    hf = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["observation.images.corner"] == {"_type": "Image"}
    assert hf["action"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 4,
                            "_type": "Sequence"}

    data = data_table(ds)
    eps = episodes_table(ds)
    for row in eps.to_dict("records"):
        ep = store.load_episode(row["vlac/robot_id"], row["vlac/episode_id"])
        a, b = row["dataset_from_index"], row["dataset_to_index"]
        images = data.column("observation.images.corner").to_pylist()[a:b]
        pixels = np.stack([np.asarray(Image.open(io.BytesIO(im["bytes"]))) for im in images])
        np.testing.assert_array_equal(pixels, ep.steps.images["corner"])
        assert images[0]["path"] == "frame-000000.png"
        state = np.array(data.column("observation.state").to_pylist()[a:b], np.float32)
        np.testing.assert_array_equal(state, ep.steps.proprio)


def test_episode_metadata_and_stats(exported):
    _, ds, _ = exported
    eps = episodes_table(ds)
    data = data_table(ds).drop_columns(["observation.images.corner"]).to_pandas()
    tasks = pd.read_parquet(ds / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert tasks["task_index"].to_dict() == {"open the drawer": 0, "close the drawer": 1}
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index",
                "meta/episodes/file_index", "success", "reason"):
        assert col in eps.columns, col
    assert list(eps["episode_index"]) == [0, 1, 2]
    assert list(eps["length"]) == [n for _, _, _, n, *_ in EPISODES]
    assert list(eps["success"]) == [True, False, True]
    assert list(eps["reason"]) == ["success", "timeout", "success"]
    assert eps["dataset_from_index"].iloc[0] == 0
    assert list(eps["dataset_from_index"].iloc[1:]) == list(eps["dataset_to_index"].iloc[:-1])
    assert eps["dataset_to_index"].iloc[-1] == N_FRAMES
    assert list(data["index"]) == list(range(N_FRAMES))
    for row in eps.to_dict("records"):
        frames = data[data["episode_index"] == row["episode_index"]]
        assert list(frames["index"]) == list(range(row["dataset_from_index"],
                                                   row["dataset_to_index"]))
        assert list(frames["frame_index"]) == list(range(row["length"]))
        assert set(frames["task_index"]) == {tasks.loc[row["tasks"][0], "task_index"]}
        assert list(frames["next.done"]) == [False] * (row["length"] - 1) + [True]
        assert frames["next.reward"].iloc[-1] == (1.0 if row["success"] else 0.0)
        # LeRobot's frame_index / fps, to the bit
        np.testing.assert_array_equal(frames["timestamp"].to_numpy(),
                                      (np.arange(row["length"]) / 10).astype(np.float32))
        # per-episode stats, as LeRobot stores them
        assert row["stats/action/count"].tolist() == [row["length"]]
        assert np.asarray(row["stats/frame_index/max"]).tolist() == [row["length"] - 1]
        assert np.stack(row["stats/observation.images.corner/mean"]).shape == (3, 1)
    stats = json.loads((ds / "meta/stats.json").read_text())
    info = json.loads((ds / "meta/info.json").read_text())
    assert set(stats) == set(info["features"])
    for key, st in stats.items():
        assert set(st) == STAT_KEYS, key
    img = stats["observation.images.corner"]
    for k in STAT_KEYS - {"count"}:
        arr = np.array(img[k])
        assert arr.shape == (3, 1, 1) and (arr >= 0).all() and (arr <= 1).all(), k
    assert stats["action"]["count"] == [N_FRAMES] and len(stats["action"]["q50"]) == 4
    actions = np.array(data["action"].tolist())
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), atol=1e-6)
    np.testing.assert_allclose(stats["action"]["min"], actions.min(0))
    assert stats["index"]["max"] == [N_FRAMES - 1]


def test_round_trip_and_import_twice(exported, tmp_path):
    store, ds, _ = exported
    fresh = EpisodeStore(tmp_path / "fresh", fsync=False)
    summary = import_lerobot(ds, fresh)
    assert (summary["imported"], summary["skipped"], summary["frames"]) == (3, 0, N_FRAMES)
    assert summary["episode_ids"] == ["ds-000000", "ds-000001", "ds-000002"]
    for i, (robot, ep_id, task, n, _seed, success, reason, _src) in enumerate(EPISODES):
        orig = store.load_episode(robot, ep_id)
        got = fresh.load_episode("lerobot", f"ds-{i:06d}")
        assert got.task == task and len(got) == n
        assert got.outcome.success is success and got.outcome.reason == reason
        assert got.info["source"] == "import"
        np.testing.assert_array_equal(got.steps.images["corner"], orig.steps.images["corner"])
        for f in ("proprio", "action", "action_tokens", "intervention"):
            np.testing.assert_array_equal(getattr(got.steps, f), getattr(orig.steps, f), f)
        np.testing.assert_array_equal(got.steps.timestamp, orig.steps.timestamp)
        assert (got.steps.logprob == 0).all() and (got.steps.policy_version == -1).all()
        assert got.steps.policy_version.dtype == np.int64
    assert fresh.load_episode("lerobot", "ds-000000").steps.intervention.sum() == 3

    again = import_lerobot(ds, fresh)
    assert (again["imported"], again["skipped"]) == (0, 3)
    assert len(fresh.list_episodes()) == 3


def test_data_files_roll_over_past_the_size_limit(exported, tmp_path):
    store, _, _ = exported
    summary = export_lerobot(store, tmp_path / "small", data_file_mb=0.004)
    ds = tmp_path / "small"
    assert len(summary["data_files"]) > 1
    info = json.loads((ds / "meta/info.json").read_text())
    assert info["data_files_size_in_mb"] == 0.004
    for row in episodes_table(ds).to_dict("records"):
        path = ds / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                             file_index=row["data/file_index"])
        idx = pq.read_table(path, columns=["episode_index", "index"]).to_pandas()
        mine = idx[idx["episode_index"] == row["episode_index"]]
        assert list(mine["index"]) == list(range(row["dataset_from_index"],
                                                 row["dataset_to_index"]))
    fresh = EpisodeStore(tmp_path / "fresh", fsync=False)
    assert import_lerobot(ds, fresh, robot_id="small-robot")["imported"] == 3


def test_filters_and_output_folder_rules(exported, tmp_path):
    store, _, _ = exported
    demo = export_lerobot(store, tmp_path / "demo", sources=["demo"])
    assert demo["episodes"] == 1 and demo["tasks"] == ["close the drawer"]
    opened = export_lerobot(store, tmp_path / "open", tasks=["open the drawer"])
    assert opened["episodes"] == 2 and opened["frames"] == 22
    picked = export_lerobot(store, tmp_path / "picked", episodes=[("r2", "e3"), ("r1", "e1")])
    assert list(episodes_table(tmp_path / "picked")["vlac/episode_id"]) == ["e3", "e1"]
    assert picked["episodes"] == 2
    with pytest.raises(ValueError, match="no complete episode"):
        export_lerobot(store, tmp_path / "none", tasks=["fly"])
    with pytest.raises(ValueError, match="not in the store"):
        export_lerobot(store, tmp_path / "none", episodes=[("r9", "nope")])
    with pytest.raises(FileExistsError, match="not empty"):
        export_lerobot(store, tmp_path / "demo")
    slow = export_lerobot(store, tmp_path / "demo", overwrite=True, fps=30)
    assert "fps=30" in slow["warnings"][0]  # the steps are 0.1 s apart
    assert json.loads((tmp_path / "demo/meta/info.json").read_text())["total_episodes"] == 3
    assert not list(tmp_path.glob(".*tmp*"))  # no leftovers of the staging folders


def strip_extras(src: Path, dst: Path) -> None:
    """A dataset as another LeRobot user would have it (or as LeRobot's delete_episodes
    rewrites ours): no tokens, intervention, measured times, success column."""
    shutil.copytree(src, dst)
    drop = ["complementary_info.action_tokens", "complementary_info.is_intervention",
            "complementary_info.timestamp_measured"]
    info = json.loads((dst / "meta/info.json").read_text())
    for k in drop:
        del info["features"][k]
    (dst / "meta/info.json").write_text(json.dumps(info))
    for f in (dst / "data").glob("*/*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(drop), f)
    for f in (dst / "meta/episodes").glob("*/*.parquet"):
        t = pq.read_table(f)
        keep = [c for c in t.column_names if c not in ("success", "reason")
                and not c.startswith("vlac/")]
        pq.write_table(t.select(keep), f)


def test_import_fills_in_what_a_plain_dataset_lacks(exported, tmp_path):
    store, ds, _ = exported
    strip_extras(ds, tmp_path / "plain")
    fresh = EpisodeStore(tmp_path / "fresh", fsync=False)
    summary = import_lerobot(tmp_path / "plain", fresh, robot_id="other")
    assert summary["imported"] == 3
    assert summary["success_rules"] == {"next.reward": 3}  # our next.reward says it
    tok = ActionTokenizer([-1.0] * 4, [1.0] * 4, 256)
    for i, (robot, ep_id, _task, _n, _seed, success, *_rest) in enumerate(EPISODES):
        orig = store.load_episode(robot, ep_id)
        got = fresh.load_episode("other", f"plain-{i:06d}")
        np.testing.assert_array_equal(got.steps.action_tokens, tok.encode(orig.steps.action))
        assert not got.steps.intervention.any()
        assert got.outcome.success is success
        assert "next.reward > 0 on the last frame" in got.outcome.reason
        np.testing.assert_allclose(got.steps.timestamp, np.arange(len(got)) * 0.1, atol=1e-5)


def test_bad_input_is_refused_with_the_problem_named(exported, tmp_path):
    _, ds, _ = exported
    store = EpisodeStore(tmp_path / "store", fsync=False)
    with pytest.raises(LeRobotFormatError, match=r"meta/info\.json is missing"):
        import_lerobot(tmp_path / "nothing-here", store)

    old = tmp_path / "old"
    shutil.copytree(ds, old)
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(LeRobotFormatError, match=r"codebase_version is 'v2\.1'.*convert_dataset"):
        import_lerobot(old, store)

    video = tmp_path / "video"
    shutil.copytree(ds, video)
    feats = dict(info["features"])
    feats["observation.images.corner"] = {**feats["observation.images.corner"], "dtype": "video"}
    (video / "meta/info.json").write_text(json.dumps({**info, "features": feats}))
    with pytest.raises(LeRobotFormatError, match=r"are videos but .* video_path None.*"
                       r"videos/\{video_key\}"):
        import_lerobot(video, store)

    no_action = tmp_path / "no-action"
    shutil.copytree(ds, no_action)
    feats = {k: v for k, v in info["features"].items() if k != "action"}
    (no_action / "meta/info.json").write_text(json.dumps({**info, "features": feats}))
    with pytest.raises(LeRobotFormatError, match=r"\['action'\] are missing"):
        import_lerobot(no_action, store)

    broken = tmp_path / "broken"
    shutil.copytree(ds, broken)
    (broken / "data/chunk-000/file-000.parquet").unlink()
    with pytest.raises(LeRobotFormatError, match=r"data file .* is missing"):
        import_lerobot(broken, store)
    assert store.list_episodes() == []
    with pytest.raises(ValueError, match="not a valid id"):
        import_lerobot(ds, store, robot_id="bad id!")


def test_configs_name_the_field(tmp_path, exported):
    store, ds, _ = exported
    with pytest.raises(ConfigError, match="`root`"):
        LeRobotExportConfig(root=tmp_path / "missing")
    with pytest.raises(ConfigError, match="`sources`"):
        LeRobotExportConfig(root=store.root, sources=["robots"])
    with pytest.raises(ConfigError, match="`fps`"):
        LeRobotExportConfig(root=store.root, fps=-1)
    with pytest.raises(ConfigError, match="`mode`"):
        LeRobotExportConfig(root=store.root, mode="gif")
    with pytest.raises(ConfigError, match="`video_file_mb`"):
        LeRobotExportConfig(root=store.root, video_file_mb=0)
    with pytest.raises(ConfigError, match="`out`"):
        LeRobotExportConfig(root=store.root, out=ds)
    with pytest.raises(ConfigError, match="`path`"):
        LeRobotImportConfig(path=tmp_path)
    with pytest.raises(ConfigError, match="`robot_id`"):
        LeRobotImportConfig(path=ds, robot_id="no/slashes")


def test_main_functions(tmp_path, exported):
    store, _, _ = exported
    out = io.StringIO()
    console = Console(file=out, width=200)
    s = export_main(LeRobotExportConfig(root=store.root, out=tmp_path / "ds", tasks=[
        "close the drawer"]), console)
    assert s["episodes"] == 1 and "exported 1 episodes" in out.getvalue()
    assert "image mode, fps 10 (from the step interval)" in out.getvalue()
    r = import_main(LeRobotImportConfig(path=tmp_path / "ds", root=tmp_path / "store"), console)
    assert r["imported"] == 1 and "imported 1 episodes" in out.getvalue()
    assert "success of 1 episode(s) from the episodes table's success column" in out.getvalue()


@pytest.mark.parametrize("name", ["ds", "lerobot/pusht", "_weird name!", "x" * 80, "..."])
def test_episode_ids_are_valid_and_deterministic(name):
    ep = lerobot_episode_id(name, 7)
    assert is_valid_id(ep) and ep.endswith("-000007")
    assert ep == lerobot_episode_id(name, 7)

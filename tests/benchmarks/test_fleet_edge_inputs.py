"""What benchmarks/fleet.py and benchmarks/edge.py measure (benchmarks/artifacts.py): a real
exported actor, reused, exported from a cached actor.pt, or refused with the commands that
make one; fleet.py's toy graph only behind --toy-artifact, and then its key line says so.
The export itself (``vlac actor export``) is stood in for by a stub that writes the files."""

import importlib.util
import os
import sys
from pathlib import Path

import artifacts
import fleet
import numpy as np
import pytest
from artifacts import ActorSource

from vlac.shared.episode import StepColumns

# by path: the repository root's edge/ package (vlac.edge) is also importable as ``edge``
_spec = importlib.util.spec_from_file_location(
    "edge_benchmark", Path(__file__).resolve().parents[2] / "benchmarks" / "edge.py")
edge = sys.modules.setdefault("edge_benchmark", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(edge)

TASKS = ("reach-v3", "push-v3")


def write_demos(store_root, tasks):
    from vlac.cloud.store.episodes import EpisodeStore

    n = 3
    steps = StepColumns(images={"corner": np.zeros((n, 8, 8, 3), np.uint8)},
                        proprio=np.zeros((n, 4), np.float32), action=np.zeros((n, 4), np.float32),
                        action_tokens=np.zeros((n, 4), np.int32),
                        logprob=np.zeros(n, np.float32), policy_version=np.zeros(n, np.int64),
                        intervention=np.zeros(n, bool), timestamp=np.arange(n, dtype=np.float64))
    store = EpisodeStore(store_root, fsync=False)
    for t in tasks:
        store.write_episode("sim-demo", f"demo-{t}", t, steps, True, source="demo", task_id=t)


@pytest.fixture
def cached_actor(tmp_path):
    """An actor.pt (its bytes never read here) and a store with demos of TASKS."""
    actor = tmp_path / "actor-bc2" / "actor.pt"
    actor.parent.mkdir()
    actor.write_bytes(b"checkpoint")
    write_demos(tmp_path / "store", TASKS)
    return ActorSource(actor=actor, store_root=tmp_path / "store", tasks=TASKS)


@pytest.fixture
def exports(monkeypatch):
    """Stands in for `vlac actor export`: writes both files, records each call."""
    calls = []

    def export(src, **options):
        calls.append((src, options))
        src.out.mkdir(parents=True, exist_ok=True)
        for name in ("actor_fp32.onnx", "actor_int8.onnx"):
            (src.out / name).write_bytes(b"onnx")

    monkeypatch.setattr(artifacts, "export_actor", export)
    return calls


def test_fleet_without_any_actor_refuses_naming_the_commands(tmp_path, exports):
    args = fleet.parse_args(["--actor", str(tmp_path / "bc" / "actor.pt"),
                             "--store-root", str(tmp_path / "store")])
    with pytest.raises(SystemExit) as e:
        fleet.real_artifact(args)
    msg = str(e.value.code)
    assert f"{tmp_path / 'bc' / 'actor.pt'} does not exist" in msg
    assert "vlac demos collect --tasks reach-v3,button-press-v3,drawer-open-v3,push-v3 " \
           f"--episodes 12 --store-root {tmp_path / 'store'}" in msg
    assert f"vlac actor pretrain --store-root {tmp_path / 'store'} --demos-per-task 2 " \
           f"--out {tmp_path / 'bc'}" in msg
    assert not exports and not (tmp_path / "bc").exists()


def test_fleet_defaults_to_the_learning_benchmarks_actor_and_store():
    args = fleet.parse_args([])
    assert (args.artifact, args.toy_artifact) == (None, False)
    assert str(args.actor) == ".cache/actor-bc2/actor.pt"
    assert str(args.store_root) == ".cache/critic-data/store"


def test_fleet_refuses_a_missing_explicit_artifact(tmp_path):
    args = fleet.parse_args(["--artifact", str(tmp_path / "a.onnx")])
    with pytest.raises(SystemExit, match="does not exist; export an actor with `vlac actor "
                                         "export"):
        fleet.real_artifact(args)


def test_fleet_exports_a_cached_actor_once_and_again_when_it_changes(cached_actor, exports):
    argv = ["--actor", str(cached_actor.actor), "--store-root", str(cached_actor.store_root)]
    said = []
    got = fleet.real_artifact(fleet.parse_args(argv), said.append)
    assert got == cached_actor.actor.parent / "export" / "actor_int8.onnx" and got.exists()
    assert len(exports) == 1 and exports[0][0].actor == cached_actor.actor
    assert "vlac actor export" in said[0]
    assert fleet.real_artifact(fleet.parse_args(argv), said.append) == got
    assert len(exports) == 1  # reused
    t = got.stat().st_mtime + 10
    os.utime(cached_actor.actor, (t, t))  # a newer actor: its export is stale
    fleet.real_artifact(fleet.parse_args(argv), said.append)
    assert len(exports) == 2


def test_an_export_without_its_actor_is_enough_for_fleet_not_for_edge(cached_actor, exports):
    artifacts.ensure_int8(cached_actor, "artifact")
    cached_actor.actor.unlink()
    assert artifacts.choose(cached_actor, "artifact") == "use"
    with pytest.raises(SystemExit, match=r"actor\.pt does not exist"):
        artifacts.choose(cached_actor, "actor")


def test_a_store_without_a_task_refuses_edge_not_fleet(cached_actor, exports):
    src = ActorSource(actor=cached_actor.actor, store_root=cached_actor.store_root,
                      tasks=(*TASKS, "pick-place-v3"))
    with pytest.raises(SystemExit) as e:
        artifacts.choose(src, "actor")
    msg = str(e.value.code)
    assert "holds no episodes of pick-place-v3" in msg and "does not exist" not in msg
    assert "vlac demos collect --tasks pick-place-v3 --episodes 12" in msg
    assert "vlac actor pretrain" not in msg
    assert artifacts.choose(src, "artifact") == "export"


def test_edge_refuses_before_loading_anything(tmp_path, exports):
    with pytest.raises(SystemExit) as e:
        edge.main(["--actor", str(tmp_path / "a" / "actor.pt"),
                   "--store-root", str(tmp_path / "store"), "--tasks", "reach-v3"])
    msg = str(e.value.code)
    assert "vlac demos collect --tasks reach-v3 " in msg
    assert f"vlac actor pretrain --store-root {tmp_path / 'store'} --demos-per-task 2 " \
           f"--tasks reach-v3 --out {tmp_path / 'a'}" in msg
    assert not exports


def test_edge_exports_its_actor_with_its_options(cached_actor, exports):
    args = edge.parse_args(["--actor", str(cached_actor.actor), "--store-root",
                            str(cached_actor.store_root), "--tasks", ",".join(TASKS),
                            "--fp32-convs", "3"])
    src = edge.actor_source(args, list(TASKS))
    assert artifacts.choose(src, "actor") == "export"
    artifacts.ensure_int8(src, "actor", say=lambda _: None, fp32_convs=args.fp32_convs)
    assert exports[0][1] == {"fp32_convs": 3} and exports[0][0].tasks == TASKS
    assert artifacts.choose(src, "actor") == "use"
    (src.out / "actor_fp32.onnx").unlink()  # edge also runs the fp32 export
    assert artifacts.choose(src, "actor") == "export"


def test_the_toy_artifact_only_behind_its_flag_and_marked(tmp_path):
    assert fleet.key_line(0.153, 2147, 1.5, toy=False) == \
        "p99_s_32=0.153 bytes_per_update=2147 delta_ratio=1.5000"
    assert fleet.key_line(0.153, 2147, 1.5, toy=True) == \
        "p99_s_32=0.153 bytes_per_update=2147 delta_ratio=1.5000 artifact=toy"
    assert fleet.parse_args(["--toy-artifact"]).toy_artifact
    with pytest.raises(SystemExit):
        fleet.parse_args(["--toy-artifact", "--artifact", str(tmp_path / "a.onnx")])
    what = fleet.make_artifacts(None, range(1, 3), tmp_path / "arts")
    assert what.startswith("TOY") and sorted(p.name for p in (tmp_path / "arts").iterdir()) \
        == ["v1.onnx", "v2.onnx"]

"""The edge process (`vlac edge run`): robots of every kind streaming episodes into a real
ingest: Meta-World, the synthetic robot, and a robot type registered from outside."""

import os

import pytest

from tests.helpers import ThreadIngest, cli_process, ingest_config, sender_config
from vlac.edge.process import EdgeAgentConfig, main
from vlac.edge.robots import MetaWorldRobotConfig, SyntheticRobotConfig, registry
from vlac.infra.cli import main as cli
from vlac.shared.config import ConfigError
from vlac.shared.hitl import OperatorConfig

pytestmark = pytest.mark.filterwarnings("ignore")


def sender_flags(keyring, robot, address, spool):
    return ["--sender.robot-id", robot, "--sender.ingest-address", address,
            "--sender.robot-secret-key", str(keyring.robot_secret(robot)),
            "--sender.server-public-key", str(keyring.server_public),
            "--sender.spool-dir", str(spool)]


def test_sim_robot_streams_episodes_with_marked_takeovers(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        cfg = EdgeAgentConfig(
            sender=sender_config(keyring, "robot-1", ingest.address, tmp_path / "spool"),
            robot=MetaWorldRobotConfig(task="push-v3", seed=4, max_steps=40),
            policy="random", operator=OperatorConfig(takeover_prob=0.1, takeover_steps=5),
            episodes=2,
            chunk_steps=8, quiet=True)
        summary = main(cfg)
        assert summary["drained"] and summary["episodes"] == 2
        assert summary["robot_type"] == "metaworld" and summary["task"] == "push-v3"
        eps = ingest.store.list_episodes()
        assert len(eps) == 2 and {e["task_id"] for e in eps} == {"push-v3"}
        assert all(e["source"] == "policy" for e in eps)
        marked = 0
        for e in eps:
            ep = ingest.store.load_episode("robot-1", e["episode_id"])
            assert ep.steps.images["corner"].shape[1:] == (128, 128, 3)
            assert (ep.steps.logprob[~ep.steps.intervention] < 0).all()
            marked += int(ep.steps.intervention.sum())
        assert marked == summary["interventions"] > 0


def test_synthetic_robot_from_a_yaml_file_and_flags(tmp_path, keyring, capsys):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        conf = tmp_path / "edge.yaml"
        conf.write_text("robot:\n  type: synthetic\n  max_steps: 12\n"
                        "policy: scripted\nepisodes: 3\n")
        assert cli(["edge", "run", "--config", str(conf), "--robot.seed", "5",
                    "--chunk-steps", "4", *sender_flags(keyring, "robot-2", ingest.address,
                                                        tmp_path / "spool")]) == 0
        out = capsys.readouterr().out
        assert "robot type: synthetic" in out and "max_steps: 12" in out and "seed: 5" in out
        eps = ingest.store.list_episodes()
        assert len(eps) == 3 and {e["task_id"] for e in eps} == {"synthetic-reach"}
        assert sum(e["outcome"]["success"] for e in eps) >= 2  # the expert gets there
        ep = ingest.store.load_episode("robot-2", eps[0]["episode_id"])
        assert ep.steps.images["corner"].shape[1:] == (128, 128, 3)


def test_features_a_robot_type_lacks_are_refused_by_name_before_it_connects(outside_robot,
                                                                            capsys):
    toy = registry.robot_config({"type": "toy-arm"})
    with pytest.raises(ConfigError, match="robot type 'toy-arm' has no scripted expert "
                                          r"\(Robot.expert_action\), which policy=scripted"):
        EdgeAgentConfig(robot=toy)
    with pytest.raises(ConfigError, match=r"which operator\.takeover_prob > 0"):
        EdgeAgentConfig(robot=toy, policy="random", operator=OperatorConfig(takeover_prob=0.1))
    with pytest.raises(ConfigError, match=r"no snapshots \(Robot.save_state / restore_state\), "
                                          "which operator.on_stall=return needs; use "
                                          "--operator.on-stall guide"):
        EdgeAgentConfig(robot=toy, policy="random", operator=OperatorConfig(on_stall="return"),
                        critic_address="x")
    # synthetic has both; the default policy is fine for it
    EdgeAgentConfig(robot=SyntheticRobotConfig(), operator=OperatorConfig(on_stall="return"),
                    critic_address="x")
    assert cli(["edge", "run", "--robot.type", "toy-arm", "--robot.steps", "3"]) == 2
    assert "has no scripted expert" in capsys.readouterr().err
    assert cli(["edge", "run", "--robot.type=ufo"]) == 2
    err = capsys.readouterr().err
    assert "known: metaworld, synthetic, toy-arm" in err and "vlac.robots" in err
    with pytest.raises(SystemExit):  # -h lists the named type's own flags
        cli(["edge", "run", "--robot.type", "toy-arm", "-h"])
    out = capsys.readouterr().out
    assert "--robot.port ROBOT.PORT" in out and "Where the arm is." in out
    assert "--robot.task " not in out and "toy-arm (my_lab_arm:ToyArm" in out


def test_a_robot_registered_from_outside_streams_into_ingest(tmp_path, keyring,
                                                             outside_robot, monkeypatch):
    """A lab's own package (a distribution on PYTHONPATH with a `vlac.robots` entry point)
    driven by `vlac edge run --robot.type toy-arm` in its own process, into a real ingest."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{outside_robot.site}{os.pathsep}{path}".rstrip(os.pathsep))
    spec = tmp_path / "toy-arm.spec.yaml"  # ingest must expect the arm's camera
    assert cli(["edge", "spec", "--robot.type", "toy-arm", "--out", str(spec)]) == 0
    icfg = ingest_config(keyring, tmp_path / "store")
    icfg.spec_file = spec
    with ThreadIngest(icfg) as ingest:
        log = tmp_path / "robot.log"
        proc = cli_process("edge", "run", "--robot.type", "toy-arm", "--robot.steps", "6",
                           "--robot.seed", "2", "--policy", "random", "--episodes", "3",
                           "--chunk-steps", "4",
                           *sender_flags(keyring, "robot-3", ingest.address, tmp_path / "spool"),
                           log=log)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
        out = log.read_text()
        assert "robot type: toy-arm" in out and "port: /dev/null" in out
        eps = ingest.store.list_episodes()
        assert len(eps) == 3 and {e["task_id"] for e in eps} == {"toy-wave"}
        assert all(e["n_steps"] == 6 and e["outcome"]["success"] for e in eps)
        ep = ingest.store.load_episode("robot-3", eps[0]["episode_id"])
        assert ep.task == "wave hello" and ep.steps.images["wrist"].shape == (6, 32, 32, 3)
        assert not list((tmp_path / "spool").glob("0*.chunk"))  # all acknowledged

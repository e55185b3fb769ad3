"""`vlac train` end to end on a tiny budget: demos, critic, actor, INT8 v0, then ingest, critic
service, publisher, learner and a robot as real processes; a report; a rerun resumes. Also
its parts: the one unassisted-success rule, the human-in-the-loop sections on their way to
the robots and the learner, the quiet console and the launcher."""

import importlib.util
import json
import logging
import os
import warnings
from pathlib import Path

import pytest

from vlac.cloud.fleet.state import FleetState
from vlac.infra.train import HitlConfig, TrainConfig, main
from vlac.shared.hitl import BCConfig, OperatorConfig, unassisted

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]


def tiny(workdir, episodes, precision="int8", **kw):
    return TrainConfig(workdir=workdir, tasks=["reach-v3"], episodes=episodes,
                       demos_per_task=3, actor_demos_per_task=2, critic_steps=30,
                       actor_steps=30, episodes_per_update=2, max_steps=60,
                       precision=precision, final_eval=2, **kw)


def test_train_runs_the_loop_writes_a_report_and_resumes(tmp_path, capfd):
    first = main(tiny(tmp_path, 4, hitl=HitlConfig(guide_on_stall=False)))
    console = capfd.readouterr()
    assert first["episodes"] == 4 and first["versions_published"] >= 2  # v0 + learner's
    report = tmp_path / "report"
    assert (report / "success.png").stat().st_size > 10_000
    data = json.loads((report / "report.json").read_text())
    md = (report / "report.md").read_text()
    assert data["tasks"]["reach-v3"]["episodes"] == 4 and data["steps_per_s"] > 0
    assert f"- versions published: {data['versions_published']}\n" in md
    assert data["precision"] == "int8" and 0 < data["mean_importance_weight"] <= 1
    ev = data["final_eval"]  # the starting and the final policy on the same fixed layouts
    assert ev["episodes_per_task"] == 2 and ev["final_version"] >= 1
    assert set(ev["start"]) == set(ev["final"]) == {"reach-v3"}
    # one task, the same layouts: the mean paired difference is the difference of the rates
    assert ev["paired_diff"] == pytest.approx(ev["final"]["reach-v3"] - ev["start"]["reach-v3"])
    assert f"| reach-v3 | {ev['start']['reach-v3']:.0%} | {ev['final']['reach-v3']:.0%} |" in md
    # robots wait for the learner between batches, so later episodes run newer versions
    assert data["episode_versions"][:2] == [0, 0] and max(data["episode_versions"]) >= 1
    learner_log = json.loads((tmp_path / "learner" / "learner_log.json").read_text())
    assert learner_log["version"] >= 1 and learner_log["log"]
    # the quiet console: the job's lines on it, the processes' output in their logs
    logs = tmp_path / "logs"
    assert "report: " in console.out and "episodes, success (last 20)" in console.out
    assert "learner stopped at version" in (logs / "learner.log").read_text()
    assert "learner stopped at version" not in console.out + console.err
    assert {"train.log", "ingest.log", "critic.log", "publisher.log", "robot-0.log"} <= \
        {f.name for f in logs.iterdir()}
    # A rerun with a larger budget keeps everything and only adds the missing episodes; this
    # one ships the learner's exact fp32 weights to the robot instead of INT8, and the
    # operator guides once the critic's progress stalls (a gain of 10 never comes, so the
    # second answered check hands over), to the end of the episode.
    operator = OperatorConfig(stall_min_gain=10.0, stall_check_every=5, stall_patience=1)
    second = main(tiny(tmp_path, 6, precision="fp32",
                       hitl=HitlConfig(guide_on_stall=True, operator=operator)))
    assert second["episodes"] == 6 and second["intervention_steps"] > 0
    assert second["hitl"]["guide_on_stall"] and first["intervention_steps"] == 0
    assert second["hitl"]["operator"]["on_stall"] == "guide"
    assert second["versions_published"] > first["versions_published"]
    fleet = FleetState(tmp_path / "fleet" / "fleet.db")
    keys = [v["artifact_key"] for v in fleet.versions()]
    fleet.close()
    assert keys[0].endswith("/actor_int8.onnx") and keys[-1].endswith("/actor_fp32.onnx")


def test_train_runs_the_off_policy_algorithm_in_the_real_loop(tmp_path):
    """parl behind the same processes: robots on the INT8 artifact stream episodes, the
    learner's Q-function and policy steps make new versions, the robots swap them in."""
    from vlac.cloud.learner.algorithms import ParlConfig

    parl = ParlConfig(critic_steps=4, critic_warmup_steps=4, policy_steps=2, candidates=2,
                      critic_batch=16, policy_batch=8)
    out = main(tiny(tmp_path, 4, hitl=HitlConfig(guide_on_stall=False, demo_replay=False,
                                                  bc=BCConfig(coef=0.0)), algorithm=parl))
    assert out["episodes"] == 4 and out["versions_published"] >= 2
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["algorithm"] == "parl" and data["mean_importance_weight"] is None
    assert max(data["episode_versions"]) >= 1  # the robots ran a version parl made
    log = json.loads((tmp_path / "learner" / "learner_log.json").read_text())["log"]
    assert log[0]["critic_steps"] == 8 and log[0]["replay_online"] > 0
    assert "the learner ran parl" in (tmp_path / "report" / "report.md").read_text()


def test_quick_defaults_to_the_two_half_solved_tasks(tmp_path):
    from vlac.cloud.learner.config import PublishConfig
    from vlac.infra.train import QUICK_TASKS, TASKS
    from vlac.shared.tasks import HEADLINE_TASKS

    quick = TrainConfig(workdir=tmp_path, quick=True)
    assert quick.tasks == QUICK_TASKS and quick.episodes == 80 and quick.final_eval == 10
    assert TrainConfig(workdir=tmp_path).final_eval == 20
    assert TrainConfig(workdir=tmp_path).tasks == TASKS == list(HEADLINE_TASKS)
    assert PublishConfig().tasks == TASKS  # the one task list
    assert TrainConfig(workdir=tmp_path, quick=True, tasks=["push-v3"]).tasks == ["push-v3"]
    with pytest.raises(Exception, match="not a Meta-World v3 task"):
        TrainConfig(workdir=tmp_path, tasks=["push"])


def _ep(robot, task, success, reason=""):
    return {"robot_id": robot, "task_id": task, "outcome": {"success": success, "reason": reason}}


def test_the_report_counts_only_what_the_policy_did_alone():
    from vlac.infra.train import solo_outcomes

    eps = [_ep("r0", "reach-v3", True), _ep("r1", "push-v3", True),  # r1's had a takeover
           _ep("r0", "reach-v3", False, "returned"), _ep("r1", "push-v3", True),
           _ep("r0", "reach-v3", True),  # restarted from r0's saved state: not on its own
           _ep("r0", "reach-v3", True)]
    assert solo_outcomes(eps, [0, 5, 0, 0, 0, 0]) == {
        "reach-v3": [True, False, False, True], "push-v3": [False, True]}


def test_one_unassisted_rule_for_the_report_and_the_benchmark():
    """Hand-made episodes: a plain success, a success with a takeover, a success restarted
    from a saved state, a failure. The report (store episodes, takeover steps counted from
    the columns, restarts from the robot's previous episode) and the learning benchmark (its
    log rows) both count them by ``vlac.shared.hitl.unassisted``."""
    from vlac.infra.train import solo_outcomes

    spec = importlib.util.spec_from_file_location("learning", ROOT / "benchmarks/learning.py")
    learning = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(learning)
    cases = [  # (success, takeover steps, restarted) -> counts
        ((True, 0, False), True), ((True, 3, False), False), ((True, 0, True), False),
        ((False, 0, False), False)]
    for (success, taken, restarted), expected in cases:
        assert unassisted(success, taken, restarted) is expected
        row = {"success": success, "interventions": taken, "returned": restarted}
        assert learning.success_alone(row) is expected
        eps = [_ep("r0", "reach-v3", False, "returned" if restarted else "timeout"),
               _ep("r0", "reach-v3", success)]
        assert solo_outcomes(eps, [0, taken])["reach-v3"][1] is expected


def test_hitl_config_wires_behaviour_cloning_to_the_protocols(tmp_path):
    assert HitlConfig().cloned and HitlConfig().guide_on_stall  # both on by default
    assert not HitlConfig(demo_replay=False, guide_on_stall=False).cloned
    assert HitlConfig(demo_replay=False, guide_on_stall=True).cloned
    with pytest.raises(Exception, match="only used by behaviour cloning"):
        HitlConfig(demo_replay=False, guide_on_stall=True, bc=BCConfig(coef=0.0))
    with pytest.raises(Exception, match="choose one stall response"):
        HitlConfig(return_on_stall=True)  # guided exploration is on by default
    # the switches set the sections' fields they decide, and refuse a contradiction
    assert HitlConfig().operator.on_stall == "guide"
    h = HitlConfig(demo_replay=False, guide_on_stall=False, return_on_stall=True)
    assert h.operator.on_stall == "return" and h.bc.demo_episodes == 0
    with pytest.raises(Exception, match=r"`hitl\.operator\.on_stall`"):
        HitlConfig(operator=OperatorConfig(on_stall="return"))


def _sections_config(tmp_path, monkeypatch, argv):
    """`vlac train ARGV` parsed by the CLI into its TrainConfig (the job itself not run)."""
    from vlac.infra.cli import main as cli

    seen = []
    monkeypatch.setattr("vlac.infra.train.main", seen.append)
    assert cli(["train", "--workdir", str(tmp_path), "--tasks", "reach-v3,push-v3",
                *argv]) == 0
    return seen[0]


def test_the_hitl_sections_reach_the_robots_and_the_learner_unchanged(tmp_path, monkeypatch):
    from vlac.infra.train.config import Paths
    from vlac.infra.train.processes import Addresses, learner_config, robot_config

    cfg = _sections_config(tmp_path, monkeypatch, [
        "--hitl.operator.takeover-prob", "0.2", "--hitl.operator.takeover-steps", "7",
        "--hitl.operator.guide-steps", "3", "--hitl.operator.stall-check-every", "4",
        "--hitl.operator.stall-patience", "3", "--hitl.operator.stall-min-gain", "0.2",
        "--hitl.bc.coef", "0.5", "--hitl.bc.batch-size", "16", "--hitl.bc.steps", "7",
        "--hitl.bc.lr", "0.001", "--hitl.bc.demo-episodes", "5",
        "--hitl.bc.takeover-replay", "9", "--hitl.bc.success-replay", "2"])
    operator = OperatorConfig(takeover_prob=0.2, takeover_steps=7, on_stall="guide",
                              guide_steps=3, stall_check_every=4, stall_patience=3,
                              stall_min_gain=0.2)
    bc = BCConfig(coef=0.5, batch_size=16, steps=7, lr=1e-3, demo_episodes=5,
                  takeover_replay=9, success_replay=2)
    assert cfg.hitl.operator == operator and cfg.hitl.bc == bc
    p, addr = Paths(tmp_path), Addresses.free()
    v0 = tmp_path / "actor_int8.onnx"
    for path in (v0, p.signing.with_name("publisher.ed25519.pub")):  # the robots check them
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert learner_config(cfg, p, tmp_path / "actor.pt", addr).bc == bc
    robots = [robot_config(cfg, p, i, v0, addr, 0) for i in range(2)]
    assert [r.operator for r in robots] == [operator, operator]
    assert all(r.critic_address == addr.critic for r in robots)
    # switched off in vlac train: no stall response on the robots, no demos in the learner
    cfg = _sections_config(tmp_path, monkeypatch, ["--no-hitl.guide-on-stall",
                                                   "--no-hitl.demo-replay", "--hitl.bc.steps",
                                                   "7"])
    robot = robot_config(cfg, p, 0, v0, addr, 0)
    assert robot.operator == OperatorConfig() and robot.critic_address == ""
    assert learner_config(cfg, p, tmp_path / "actor.pt", addr).bc == BCConfig(
        steps=7, demo_episodes=0)


def test_the_quiet_console_shows_the_jobs_lines_and_logs_the_rest(tmp_path, capfd):
    """Quiet: the job's lines, the status and errors on the console; third-party records,
    other vlac INFO, warnings, prints and C-level output only in the log. Verbose (the CLI's
    -v: its stderr handler and the root logger at DEBUG): on the console too."""
    import sys

    from vlac.infra.train.logs import job_console

    root = logging.getLogger()
    before = (root.handlers[:], root.level)
    for verbose in (False, True):
        cli_handler = logging.StreamHandler(sys.stderr)
        if verbose:  # as `vlac -v` leaves it
            root.addHandler(cli_handler)
            root.setLevel(logging.DEBUG)
        with job_console(tmp_path / str(verbose), verbose) as jc:
            logging.getLogger("onnx_ir.passes").warning("Replaced initializer 'a' with 'b'")
            logging.getLogger("vlac.cloud.models.encoders").info("image encoder on ORT")
            logging.getLogger("vlac.infra.train.job").info("the job's own line")
            logging.getLogger("deepspeed").error("an error from a library")
            if not verbose:
                with warnings.catch_warnings():
                    warnings.simplefilter("always")
                    warnings.warn("gymnasium nags", UserWarning, stacklevel=1)
            print("a library's print")
            os.write(2, b"a C extension's message\n")
            jc.console.print("the live status")
        root.removeHandler(cli_handler)
        root.setLevel(before[1])
        out = capfd.readouterr()
        shown = out.out + out.err
        log = (tmp_path / str(verbose) / "train.log").read_text()
        for line in ("the job's own line", "the live status", "an error from a library"):
            assert line in shown
        for line in ("Replaced initializer", "image encoder on ORT", "the job's own line",
                     "an error from a library"):
            assert line in log
        if not verbose:
            for line in ("Replaced initializer", "image encoder on ORT", "gymnasium nags",
                         "a library's print", "a C extension's message"):
                assert line not in shown and line in log
        else:
            for line in ("Replaced initializer", "image encoder on ORT", "a library's print",
                         "a C extension's message"):
                assert line in shown
        assert (root.handlers, root.level) == before  # the job leaves logging as it was


def test_the_launcher_logs_each_process_and_shows_where_it_failed(tmp_path):
    from vlac.infra.train.launch import Launcher

    launcher = Launcher(log_dir=tmp_path)
    launcher.start("speaker", "builtins:print", "hello from a child")
    launcher.start("broken", "json:loads", "not json")
    for proc in launcher.procs.values():
        proc.join(60)
    assert launcher.failed() == ["broken"]
    assert "hello from a child" in (tmp_path / "speaker.log").read_text()
    where = launcher.where(["broken"])
    assert str(tmp_path / "broken.log") in where and "JSONDecodeError" in where

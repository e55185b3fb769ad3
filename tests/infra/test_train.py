"""`vlac train` end to end on a tiny budget: demos, critic, actor, INT8 v0, then ingest, critic
service, publisher, learner and a robot as real processes; a report; a rerun resumes."""

import json

import pytest

from vlac.cloud.fleet.state import FleetState
from vlac.infra.train import HitlConfig, TrainConfig, main

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(900)]


def tiny(workdir, episodes, precision="int8", **kw):
    return TrainConfig(workdir=workdir, tasks=["reach-v3"], episodes=episodes,
                       demos_per_task=3, actor_demos_per_task=2, critic_steps=30,
                       actor_steps=30, episodes_per_update=2, max_steps=60,
                       precision=precision, final_eval=2, **kw)


def test_train_runs_the_loop_writes_a_report_and_resumes(tmp_path):
    first = main(tiny(tmp_path, 4, hitl=HitlConfig(guide_on_stall=False)))
    assert first["episodes"] == 4 and first["versions_published"] >= 2  # v0 + learner's
    report = tmp_path / "report"
    assert (report / "success.png").stat().st_size > 10_000
    data = json.loads((report / "report.json").read_text())
    assert data["tasks"]["reach-v3"]["episodes"] == 4 and data["steps_per_s"] > 0
    assert "versions published" in (report / "report.md").read_text()
    assert data["precision"] == "int8" and 0 < data["mean_importance_weight"] <= 1
    ev = data["final_eval"]  # the starting and the final policy on the same fixed layouts
    assert ev["episodes_per_task"] == 2 and ev["final_version"] >= 1
    assert set(ev["start"]) == set(ev["final"]) == {"reach-v3"}
    assert -1 <= ev["paired_diff"] <= 1 and "fixed evaluation layouts" in \
        (report / "report.md").read_text()
    # robots wait for the learner between batches, so later episodes run newer versions
    assert data["episode_versions"][:2] == [0, 0] and max(data["episode_versions"]) >= 1
    learner_version = json.loads((tmp_path / "learner" / "learner_log.json").read_text())
    # A rerun with a larger budget keeps everything and only adds the missing episodes; this
    # one ships the learner's exact fp32 weights to the robot instead of INT8, and the
    # operator guides once the critic's progress stalls (a gain of 10 never comes, so the
    # second answered check hands over), to the end of the episode.
    second = main(tiny(tmp_path, 6, precision="fp32",
                       hitl=HitlConfig(guide_on_stall=True, stall_min_gain=10.0,
                                       stall_check_every=5, stall_patience=1)))
    assert second["episodes"] == 6 and second["intervention_steps"] > 0
    assert second["hitl"]["guide_on_stall"] and first["intervention_steps"] == 0
    assert second["versions_published"] > first["versions_published"]
    assert learner_version
    fleet = FleetState(tmp_path / "fleet" / "fleet.db")
    keys = [v["artifact_key"] for v in fleet.versions()]
    fleet.close()
    assert keys[0].endswith("/actor_int8.onnx") and keys[-1].endswith("/actor_fp32.onnx")


def test_quick_defaults_to_the_two_half_solved_tasks(tmp_path):
    from vlac.infra.train import QUICK_TASKS, TASKS

    quick = TrainConfig(workdir=tmp_path, quick=True)
    assert quick.tasks == QUICK_TASKS and quick.episodes == 80 and quick.final_eval == 10
    assert TrainConfig(workdir=tmp_path).final_eval == 20
    assert TrainConfig(workdir=tmp_path).tasks == TASKS
    assert TrainConfig(workdir=tmp_path, quick=True, tasks=["push-v3"]).tasks == ["push-v3"]
    with pytest.raises(Exception, match="not a Meta-World v3 task"):
        TrainConfig(workdir=tmp_path, tasks=["push"])


def test_the_report_counts_only_what_the_policy_did_alone():
    from vlac.infra.train import solo_outcomes

    def ep(robot, task, success, reason=""):
        return {"robot_id": robot, "task_id": task,
                "outcome": {"success": success, "reason": reason}}

    eps = [ep("r0", "reach-v3", True), ep("r1", "push-v3", True),  # r1's had a takeover
           ep("r0", "reach-v3", False, "returned"), ep("r1", "push-v3", True),
           ep("r0", "reach-v3", True),  # restarted from r0's saved state: not on its own
           ep("r0", "reach-v3", True)]
    assert solo_outcomes(eps, [0, 5, 0, 0, 0, 0]) == {
        "reach-v3": [True, False, False, True], "push-v3": [False, True]}


def test_hitl_config_wires_behaviour_cloning_to_the_protocols(tmp_path):
    from vlac.infra.train import HitlConfig

    assert HitlConfig().cloned and HitlConfig().guide_on_stall  # both on by default
    assert not HitlConfig(demo_replay=False, guide_on_stall=False).cloned
    assert HitlConfig(demo_replay=False, guide_on_stall=True).cloned
    with pytest.raises(Exception, match="only used by behaviour cloning"):
        HitlConfig(demo_replay=False, guide_on_stall=True, bc_coef=0.0)
    with pytest.raises(Exception, match="choose one stall response"):
        HitlConfig(return_on_stall=True)  # guided exploration is on by default

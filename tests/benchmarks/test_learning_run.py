"""The learning benchmark's job for real, tiny: ppo with oracle rewards on reach-v3, two
20-step episodes, one update, one evaluation layout greedy and one sampled. It starts from
the benchmark's imitation policy where one has been built, otherwise from a tiny untrained
actor (no critic is needed: oracle rewards and no help)."""

import json
from pathlib import Path

import learning
import pytest
import torch
from learning_run import run_variant

from vlac.cloud.actor.model import TorchActor
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(300)]
INIT = Path(".cache/actor-bc2/actor.pt")


def init_actor(tmp_path) -> Path:
    if INIT.exists():
        return INIT
    torch.manual_seed(0)
    path = tmp_path / "init.pt"
    TorchActor(SmallVLAC(VLACConfig(d_model=32, layers=1, heads=2, ff=64, dropout=0.0)),
               camera="corner").save(path)
    return path


def test_a_tiny_oracle_run_learns_from_metaworld_rewards_and_evaluates_three_ways(tmp_path):
    a = learning.parser().parse_args([
        "--algorithms", "ppo", "--rewards", "oracle", "--hitl", "none", "--tasks", "reach-v3",
        "--episodes", "2", "--max-steps", "20", "--per-update", "2", "--final-eval", "1",
        "--init", str(init_actor(tmp_path)), "--work", str(tmp_path / "work"),
        "--bc.steps", "0"])
    rows = run_variant(learning.job(a, "ppo-oracle", 0))
    rollouts = [r for r in rows if not r.get("eval")]
    evals = [r for r in rows if r.get("eval")]
    assert [(r["variant"], r["task"], r["episode"]) for r in rollouts] == [
        ("ppo-oracle", "reach-v3", 0), ("ppo-oracle", "reach-v3", 1)]
    assert [r["mode"] for r in evals] == ["greedy", "sampled", "mean"]
    assert all(r["layout"] == 0 and r["steps"] >= 1 for r in evals)
    # the update consumed both episodes: their oracle rewards were found by their frames
    log = json.loads((tmp_path / "work" / "ppo-oracle-s0" / "learner_log.json").read_text())
    assert len(log) == 1 and log[0]["episodes"] == 2
    assert log[0]["return_mean"] != 0.0  # Meta-World's shaped progress (sparse: 0 on failure)
    assert (tmp_path / "work" / "ppo-oracle-s0" / "actor.pt").exists()

"""benchmarks/learning_perturb.py: a random move matches the learner's per-tensor distance
from the start, in another direction; the tiny run evaluates every actor in every mode."""

import learning_perturb
import pytest
import torch

from vlac.cloud.actor.model import TorchActor
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig

pytestmark = pytest.mark.filterwarnings("ignore")


def _actors(tmp_path):
    torch.manual_seed(0)
    start = TorchActor(SmallVLAC(VLACConfig(d_model=32, layers=1, heads=2, ff=64,
                                            dropout=0.0)), camera="corner")
    (tmp_path / "frozen-s0").mkdir()
    start.save(tmp_path / "frozen-s0" / "actor.pt")
    with torch.no_grad():  # the "learner" moved only the action head
        start.model.action_head.weight.add_(0.1)
    (tmp_path / "ppo-critic-s0").mkdir()
    start.save(tmp_path / "ppo-critic-s0" / "actor.pt")
    return tmp_path / "frozen-s0" / "actor.pt", TorchActor.load(tmp_path / "ppo-critic-s0"
                                                                / "actor.pt")


def test_the_random_move_has_the_learners_size_per_tensor(tmp_path):
    start_path, learned = _actors(tmp_path)
    start = TorchActor.load(start_path).model.state_dict()
    moved = learning_perturb.matched_random_move(start_path, learned, 0).model.state_dict()
    want = learned.model.state_dict()
    for name, p in start.items():
        if not p.is_floating_point():
            continue
        dist = (moved[name] - p).norm()
        assert torch.isclose(dist, (want[name] - p).norm(), rtol=1e-4), name
        if name == "action_head.weight":
            assert dist > 0 and not torch.allclose(moved[name], want[name])
        else:
            assert dist == 0, name


def test_a_tiny_run_evaluates_start_learner_and_draws(tmp_path, capsys):
    _actors(tmp_path)
    rows = learning_perturb.main(["--work", str(tmp_path), "--tasks", "reach-v3",
                                  "--final-eval", "1", "--max-steps", "8", "--draws", "2"])
    assert sorted({r["variant"] for r in rows}) == ["frozen", "learned", "random-0",
                                                    "random-1"]
    assert len(rows) == 4 * 3  # 4 actors x 3 modes x 1 layout
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("random_vs_frozen=")

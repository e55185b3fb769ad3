"""benchmarks/learning_decode.py on tiny saved actors: every mode on every layout, the frozen
control paired with itself is 0, and the greedy rows equal the benchmark's own final
evaluation of the same actor."""

import learning_decode
import pytest
import torch
from learning_run import final_evaluation

from vlac.cloud.actor.model import TorchActor
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig

pytestmark = pytest.mark.filterwarnings("ignore")


def test_decodes_saved_actors_three_ways(tmp_path, capsys):
    torch.manual_seed(0)
    actor = TorchActor(SmallVLAC(VLACConfig(d_model=32, layers=1, heads=2, ff=64,
                                            dropout=0.0)), camera="corner")
    for v in ("frozen", "copy"):
        (tmp_path / f"{v}-s0").mkdir()
        actor.save(tmp_path / f"{v}-s0" / "actor.pt")
    rows = learning_decode.main(["--work", str(tmp_path), "--variants", "copy",
                                 "--tasks", "reach-v3", "--final-eval", "2",
                                 "--max-steps", "10"])
    assert sorted({(r["variant"], r["mode"]) for r in rows}) == sorted(
        (v, m) for v in ("frozen", "copy") for m in ("greedy", "sampled", "mean"))
    assert len(rows) == 2 * 3 * 2
    out = capsys.readouterr().out
    assert "the mean bin of each dimension" in out  # one table per mode
    assert out.strip().splitlines()[-1] == "mean_vs_frozen=+0.0 greedy_vs_frozen=+0.0"
    again = final_evaluation({"variant": "copy", "seed": 0, "tasks": ["reach-v3"],
                              "final_eval": 2, "max_steps": 10, "temperature": 1.0},
                             TorchActor.load(tmp_path / "copy-s0" / "actor.pt"), 0, ("greedy",))
    mine = [r for r in rows if r["variant"] == "copy" and r["mode"] == "greedy"]
    assert [(r["layout"], r["success"], r["steps"]) for r in mine] == \
        [(r["layout"], r["success"], r["steps"]) for r in again]
    assert (tmp_path / "decode.json").exists()

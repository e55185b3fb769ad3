"""benchmarks/learning_drift.py on tiny actors and a tiny demo store: the frozen start moves
0 bins, a copy of it changes nothing, a perturbed one moves, and the gaps are what they are
by hand."""

import re

import learning_drift
import numpy as np
import torch

from tests.cloud.test_learner import TASK, TINY, make_steps
from vlac.cloud.actor.model import TorchActor
from vlac.cloud.models.vlac import SmallVLAC
from vlac.cloud.store.episodes import EpisodeStore


def test_drift_against_the_frozen_start(tmp_path, capsys):
    store = EpisodeStore(tmp_path / "store", fsync=False)
    for i in range(4):  # demo-0 and demo-1 pretrained on, demo-2 and demo-3 held out
        store.write_episode("sim", f"demo-{i}", TASK, make_steps(9, seed=i), True,
                            source="demo", task_id="t-v3")
    torch.manual_seed(0)
    frozen = TorchActor(SmallVLAC(TINY), camera="corner")
    for name in ("frozen", "copy", "moved"):
        (tmp_path / "work" / f"{name}-s0").mkdir(parents=True)
    frozen.save(tmp_path / "work" / "frozen-s0" / "actor.pt")
    frozen.save(tmp_path / "work" / "copy-s0" / "actor.pt")
    with torch.no_grad():
        for p in frozen.model.parameters():
            p.add_(torch.randn_like(p))
    frozen.save(tmp_path / "work" / "moved-s0" / "actor.pt")
    rows = learning_drift.main([str(tmp_path / "work"), "--store", str(tmp_path / "store"),
                                "--tasks", "t-v3", "--episodes", "2", "--every", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    by = {r["variant"]: r for r in rows}
    assert by["frozen"]["shift"] == 0 and by["copy"]["shift"] == 0 and by["moved"]["shift"] > 0
    assert by["copy"]["expert_gap"] == by["frozen"]["expert_gap"] and by["frozen"]["states"] == 18
    # the gap by hand: the frozen actor's greedy tokens on demo-2 and demo-3
    actor = TorchActor.load(tmp_path / "work" / "frozen-s0" / "actor.pt")
    states = learning_drift.demo_states(store, actor, "t-v3", 2, 1)
    greedy = learning_drift.token_stats(actor, states)["greedy"]
    assert np.isclose(by["frozen"]["expert_gap"], np.abs(greedy - states["tokens"]).mean())
    assert 0 < by["frozen"]["entropy"] <= np.log(256) + 1e-5
    assert re.fullmatch(r"greedy_shift_bins=[\d.]+ expert_gap_frozen=[\d.]+ "
                        r"expert_gap_change=[+-][\d.]+ entropy_change=[+-][\d.]+", line), line
    assert (tmp_path / "work" / "drift-s0.png").exists()

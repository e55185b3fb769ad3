"""benchmarks/learning_practised.py's pairing, by hand."""

import math

import pytest
from learning_practised import paired


def test_paired_difference_layout_by_layout():
    rows = [{"variant": v, "mode": "greedy", "task": "t", "layout": i, "success": s}
            for v, outcomes in (("frozen", [1, 0, 0, 1]), ("ppo", [1, 1, 0, 0]))
            for i, s in enumerate(outcomes)]
    mean, se, n = paired(rows, "ppo", "greedy")
    # differences 0, +1, 0, -1: mean 0, sd sqrt(2/3), se sqrt(2/3)/2
    assert n == 4 and mean == 0 and se == pytest.approx(100 * math.sqrt(2 / 3) / 2)
    assert math.isnan(paired(rows, "ppo", "sampled")[0])

"""benchmarks/learning_returns.py's AUC, by hand: over all pairs and within start groups."""

import math

from learning_returns import pair_auc, report


def test_pair_auc_over_all_pairs_and_within_groups():
    scores = [0.9, 0.2, 0.5, 0.5, 0.1]
    success = [True, False, True, False, False]
    # successes 0.9, 0.5 against failures 0.2, 0.5, 0.1: 3 + (1 + 0.5 + 1) = 5.5 of 6
    assert pair_auc(scores, success) == 5.5 / 6
    # within A (0.9 vs 0.2: 1 of 1) and B (0.5 vs 0.5 and 0.1: 1.5 of 2); C has no pair
    assert pair_auc(scores, success, ["A", "A", "B", "B", "B"]) == 2.5 / 3
    assert math.isnan(pair_auc([1.0, 2.0], [True, True]))
    assert math.isnan(pair_auc([1.0, 2.0], [True, False], ["A", "B"]))


def test_report_means_over_tasks_and_skips_tasks_without_a_pair(capsys):
    rows = [{"task": "a", "success": s, "return": r, "start": g}
            for s, r, g in [(True, 1.0, "x"), (False, 0.0, "x"), (False, 2.0, "y")]]
    rows += [{"task": "b", "success": False, "return": 0.3, "start": "z"}]
    auc_all, auc_same = report(rows)
    assert auc_all == 0.5 and auc_same == 1.0
    assert "a" in capsys.readouterr().out

"""The done threshold's maths on hand-computed cases."""

import numpy as np
import pytest

from vlac.cloud.critic.done import calibrate, choose_threshold, precision_recall, split_episodes


def test_precision_recall_by_hand():
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
    truth = np.array([1, 1, 0, 1, 0, 0], bool)
    # > 0.5: four called done, three of them right; three true, all found
    assert precision_recall(probs, truth, 0.5) == (0.75, 1.0)
    # > 0.75: two called, both right; two of three found
    assert precision_recall(probs, truth, 0.75) == (1.0, pytest.approx(2 / 3))
    # nothing called done: precision 1 by convention, recall 0
    assert precision_recall(probs, truth, 0.95) == (1.0, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        precision_recall(probs, truth[:3], 0.5)


def test_choose_threshold_takes_the_most_recall_at_the_precision():
    probs = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.2])
    truth = np.array([1, 1, 0, 1, 0, 0], bool)
    # thresholds 0.8 (1 called, right), 0.7 (2 called, right), 0.6 (3 called, 2 right:
    # 0.67), 0.4 (0.75), 0.2 (0.6): precision >= 0.9 only at 0.8 and 0.7; 0.7 finds more
    assert choose_threshold(probs, truth, 0.9) == 0.7
    assert choose_threshold(probs, truth, 0.7) == 0.4
    assert choose_threshold(probs, truth, 0.5) == 0.2
    # a false positive at the top: no threshold reaches 0.9
    assert choose_threshold(np.array([0.9, 0.5]), np.array([0, 1], bool), 0.9) is None
    assert choose_threshold(probs, np.zeros(6, bool)) is None


def test_calibrate_judges_the_threshold_on_the_other_half():
    val = (np.array([0.95, 0.9, 0.6, 0.1]), np.array([1, 1, 0, 0], bool))
    test = (np.array([0.97, 0.92, 0.85, 0.3]), np.array([1, 0, 1, 0], bool))
    r = calibrate(val, test, 0.9)
    assert r["threshold"] == 0.6  # on val, > 0.6 calls the two true ones only
    assert r["val_at_threshold"] == (1.0, 1.0)
    assert r["test_at_threshold"] == (pytest.approx(2 / 3), 1.0)
    assert r["test_at_0.5"] == (pytest.approx(2 / 3), 1.0) and r["test_frames"] == 4
    empty = calibrate(val, (np.zeros(0), np.zeros(0, bool)), 0.9)
    assert empty["test_at_threshold"] is None and empty["test_frames"] == 0
    assert calibrate(val, test, 1.01)["val_at_threshold"] is None  # unreachable


def test_split_episodes_is_seeded_and_disjoint():
    items = list(range(7))
    a, b = split_episodes(items, seed=3)
    assert sorted(a + b) == items and len(a) == 4 and not set(a) & set(b)
    assert split_episodes(items, seed=3) == (a, b)

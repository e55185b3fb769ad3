"""VOC and the negative rates on hand-computed cases: a scripted critic whose answers are
known, so each metric's value can be worked out by hand (as ppo.py's GAE has a loop)."""

import random

import numpy as np
import pytest

from vlac.cloud.critic.data import EpisodeFeatures
from vlac.cloud.critic.evaluate import (
    ZERO_TOKEN,
    direct_voc,
    episode_voc,
    final_progress,
    negatives,
    success_auc,
)


class _Text:
    def encode(self, sentences):
        return np.array([[1.0 if s == "open the drawer" else 0.0] for s in sentences])


class ScriptedCritic:
    """Frame i's feature holds i. The delta of a pair (a, b) is ``step * (b - a)`` under the
    episode's own sentence and ``+0.5`` (progress that is not there) under any other; the
    done probability is 0.9 on the last frame."""

    def __init__(self, step: float, last: int) -> None:
        self.step, self.last, self.text_encoder = step, last, _Text()

    def critique_tokens(self, text, fa, fb, ref=None):
        a, b = fa[:, 0, 0].astype(float), fb[:, 0, 0].astype(float)
        own = text[:, 0] > 0.5
        d = np.where(own, self.step * (b - a), 0.5)
        done = np.where(b >= self.last, 0.9, 0.1)
        tok = ZERO_TOKEN + np.sign(d).astype(int) * 3
        return d, done, tok


def episode(t: int) -> EpisodeFeatures:
    feats = np.arange(t, dtype=np.float16).reshape(t, 1, 1)
    return EpisodeFeatures("r", "e", "drawer-open-v3", "open the drawer", True, feats)


def test_voc_is_one_for_monotone_progress_and_minus_one_for_reversed():
    ep = episode(6)
    voc, prog, done = episode_voc(ScriptedCritic(0.1, 5), ep, "open the drawer")
    assert voc == pytest.approx(1.0)
    np.testing.assert_allclose(prog, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-6)
    assert done.tolist() == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 0.9])  # one per frame
    voc, _, _ = episode_voc(ScriptedCritic(-0.1, 5), ep, "open the drawer")
    assert voc == pytest.approx(-1.0)
    assert direct_voc(ScriptedCritic(0.1, 5), ep, "open the drawer") == pytest.approx(1.0)


def test_voc_of_a_curve_with_one_setback_by_hand():
    """Deltas +1, -2, +3 give progress 0, 1, -1, 2: ranks 2, 3, 1, 4 against time 1..4, so
    Spearman = 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * (1 + 1 + 4 + 0) / 60 = 0.4."""

    class Setback(ScriptedCritic):
        def critique_tokens(self, text, fa, fb, ref=None):
            d = np.array([1.0, -2.0, 3.0])
            return d, np.zeros(3), np.full(3, ZERO_TOKEN)

    voc, prog, _ = episode_voc(Setback(0, 0), episode(4), "open the drawer")
    assert prog.tolist() == [0.0, 1.0, -1.0, 2.0]
    assert voc == pytest.approx(0.4)


def test_negative_rates_by_hand():
    """Static pairs: delta 0 -> all pass. Reversed pairs (b before a): delta < 0 -> all pass.
    Mismatched sentence: this critic claims +0.5 progress -> none pass."""
    out = negatives(ScriptedCritic(0.1, 9), episode(10), "open the drawer", "press the button",
                    random.Random(0))
    assert out["static"] == [True] * 10 and out["static_token"] == [True] * 10
    assert len(out["reversed"]) == 21  # pairs j >= i + 4 among 10 frames: 6+5+...+1
    assert all(out["reversed"]) and all(out["reversed_token"])
    assert not any(out["mismatched"]) and not any(out["mismatched_token"])


def test_final_progress_is_the_delta_from_the_first_to_the_last_frame():
    assert final_progress(ScriptedCritic(0.1, 5), episode(6), "open the drawer") == \
        pytest.approx(0.5)
    assert final_progress(ScriptedCritic(0.1, 5), episode(6), "press the button") == 0.5


def test_success_auc_by_hand():
    """Successes 0.9, 0.5, 0.3 against failures 0.4, 0.3: of the 6 pairs the success is
    higher in 0.9>0.4, 0.9>0.3, 0.5>0.4, 0.5>0.3 and tied in 0.3=0.3: (4 + 0.5) / 6."""
    assert success_auc([0.9, 0.5, 0.3], [0.4, 0.3]) == pytest.approx(4.5 / 6)
    assert success_auc([1.0], [0.0]) == 1.0 and success_auc([0.0], [1.0]) == 0.0
    assert success_auc([0.2, 0.2], [0.2]) == 0.5
    assert success_auc([0.5], []) is None and success_auc([], [0.5]) is None

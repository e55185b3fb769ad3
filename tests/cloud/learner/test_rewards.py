"""Rewards: shaping an episode's critic scores or success flag, and where they come from."""

import numpy as np
import pytest

from vlac.cloud.learner.config import RewardsConfig
from vlac.cloud.learner.rewards import progress_rewards, reward_source, shape_rewards
from vlac.shared.config import ConfigError


def test_shape_rewards_edge_cases():
    d, p = np.array([0.1, 0.2, 0.3], np.float32), np.array([0.0, 0.95, 0.99], np.float32)
    r, term = shape_rewards("critic", 4, False, d, p, 0.9)  # critic done after step 1
    np.testing.assert_allclose(r, [0.1, 0.2])
    assert term
    r, term = shape_rewards("critic", 4, True, d, np.zeros(3), 0.9)  # robot says success
    np.testing.assert_allclose(r, [0.1, 0.2, 0.3, 1.0])  # the success reward at the end
    assert term
    r, term = shape_rewards("critic", 4, True, d, p, 0.9, success_reward=0.5)
    np.testing.assert_allclose(r, [0.1, 0.7])
    assert term
    r, term = shape_rewards("critic", 4, False, d, np.zeros(3), 0.9)  # timeout: bootstrap
    assert len(r) == 3 and not term
    r, term = shape_rewards("critic", 4, False, d, p, 1.0)  # threshold 1 never fires
    assert len(r) == 3 and not term
    r, term = shape_rewards("sparse", 3, True)
    np.testing.assert_array_equal(r, [0, 0, 1])
    assert term
    r, term = shape_rewards("sparse", 3, False)
    np.testing.assert_array_equal(r, [0, 0])
    assert not term
    assert shape_rewards("critic", 1, False, np.zeros(0), np.zeros(0))[0].size == 0
    assert shape_rewards("critic", 1, True, np.zeros(0), np.zeros(0))[1]


def test_progress_rewards_sum_to_the_final_progress():
    phi = np.array([0.1, 0.05, 0.3, 0.6], np.float32)  # delta(o_0, o_t+1)
    r = progress_rewards(phi)
    np.testing.assert_allclose(r, [0.1, -0.05, 0.25, 0.3], atol=1e-6)
    assert r.sum() == pytest.approx(0.6)
    assert progress_rewards(np.zeros(0)).size == 0


def test_reward_source_needs_a_critic_or_a_service():
    with pytest.raises(ConfigError, match=r"`rewards.critic`.*--rewards\.service"):
        reward_source(RewardsConfig())
    assert reward_source(RewardsConfig(mode="sparse")) is None

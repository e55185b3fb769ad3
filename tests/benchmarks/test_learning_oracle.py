"""The learning benchmark's oracle reward (benchmarks/learning_oracle.py) on a hand-made
4-frame episode: what it returns, how the learner shapes it, and the store round trip its
frame key relies on."""

import numpy as np
import pytest
from learning_oracle import OracleRewards, RewardRecorder, frames_key

from vlac.cloud.learner.config import RewardsConfig
from vlac.cloud.learner.rewards import critic_scores, shape_rewards
from vlac.edge.robots.robot import StepResult

# Meta-World's reward after each of the 4 actions (R[k]: after action k, in [0, 10])
R = [2.0, 3.0, 5.0, 10.0]


def frames(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


def test_progress_since_the_first_frame_from_the_simulator_reward():
    oracle = OracleRewards()
    oracle.register(frames(), R)
    delta, done = oracle.episode_rewards("reach", frames(), from_first=True)
    # delta[t-1] = (R[t-1] - R[0]) / 10, t = 1..3: R[0] stands in for the unseen R(o_0)
    assert delta == pytest.approx([0.0, 0.1, 0.3])
    assert done.tolist() == [0, 0, 0] and delta.dtype == np.float32
    # consecutive pairs: phi(o_0..o_3) = [2, 2, 3, 5] / 10
    assert oracle.episode_rewards("reach", frames())[0] == pytest.approx([0.0, 0.1, 0.2])
    assert oracle.episode_rewards("reach", frames(), stride=2)[0] == \
        pytest.approx([0.1, 0.3, 0.2])  # pairs (0, 2), (1, 3), (2, 3)


def test_the_learner_shapes_it_like_critic_progress():
    oracle = OracleRewards()
    oracle.register(frames(), R)
    cfg = RewardsConfig(mode="critic")
    delta, done = critic_scores(oracle, cfg, "reach", frames())
    assert delta == pytest.approx([0.0, 0.1, 0.2])  # potential differences of [0, .1, .3]
    rewards, terminal = shape_rewards(cfg.mode, 4, True, delta, done, cfg.done_threshold,
                                      cfg.success_reward)
    assert rewards == pytest.approx([0.0, 0.1, 0.2, 1.0]) and terminal  # + success at the end
    rewards, terminal = shape_rewards(cfg.mode, 4, False, delta, done)
    assert rewards == pytest.approx([0.0, 0.1, 0.2]) and not terminal  # bootstraps from o_3


def test_unknown_frames_and_a_wrong_count_are_refused():
    oracle = OracleRewards()
    oracle.register(frames(0), R)
    with pytest.raises(KeyError, match="no episode of 4 frames of 'reach' was registered"):
        oracle.episode_rewards("reach", frames(1), from_first=True)
    with pytest.raises(ValueError, match="4 frames but 3 rewards"):
        oracle.register(frames(2), R[:3])


def test_frames_come_back_from_the_store_with_the_same_key(tmp_path):
    from tests.cloud.test_learner import make_steps
    from vlac.cloud.store.episodes import EpisodeStore

    steps = make_steps(5)
    store = EpisodeStore(tmp_path / "store", fsync=False)
    store.write_episode("bench", "ep-0", "press the button", steps, False, task_id="button-v3")
    back = EpisodeStore(tmp_path / "store", read_only=True).load_episode("bench", "ep-0")
    assert frames_key(back.steps.images["corner"]) == frames_key(steps.images["corner"])
    assert frames_key(steps.images["corner"][:4]) != frames_key(steps.images["corner"])


class FakeRobot:
    spec = "the spec"

    def __init__(self):
        self.k = 0

    def reset(self):
        self.k = 0
        return "obs"

    def act(self, action):
        self.k += 1
        return StepResult("obs", False, False, info={"step": self.k, "reward": 1.5 * self.k})

    def close(self):
        return "closed"


def test_the_recorder_keeps_one_episode_of_rewards_and_delegates_the_rest():
    robot = RewardRecorder(FakeRobot())
    assert robot.spec == "the spec" and robot.reset() == "obs"
    robot.act(None)
    robot.act(None)
    assert robot.rewards == [1.5, 3.0]
    robot.reset()
    robot.act(None)
    assert robot.rewards == [1.5] and robot.close() == "closed"

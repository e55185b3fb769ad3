"""The synthetic robot: frames, determinism, its expert, snapshots and bad actions."""

import numpy as np
import pytest

from vlac.edge.robots import SyntheticRobot, SyntheticRobotConfig
from vlac.shared.config import ConfigError


def test_frames_are_upright_uint8_and_deterministic_per_seed():
    def first_frames(seed):
        with SyntheticRobot(SyntheticRobotConfig(seed=seed, image_size=32)) as r:
            obs = r.reset()
            return obs, r.act(np.array([1.0, 0, 0, 1.0])).observation

    a0, a1 = first_frames(3)
    b0, _ = first_frames(3)
    c0, _ = first_frames(4)
    img = a0.images["corner"]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
    assert a0.proprio.shape == (4,) and a0.proprio.dtype == np.float32
    np.testing.assert_array_equal(img, b0.images["corner"])
    assert not np.array_equal(img, c0.images["corner"])
    assert not np.array_equal(img, a1.images["corner"])  # the arm moved
    assert a1.proprio[3] == 1.0 and a0.task == "reach the goal"


def test_the_expert_reaches_the_goal_and_random_actions_time_out():
    with SyntheticRobot(SyntheticRobotConfig(seed=1, max_steps=40)) as r:
        obs, steps = r.reset(), 0
        while True:
            res = r.act(r.expert_action(obs))
            obs, steps = res.observation, steps + 1
            if res.done:
                break
        assert res.success and not res.truncated and steps < 40
        r.reset()
        res = r.act(np.zeros(4))
        for _ in range(39):
            res = r.act(np.zeros(4))
        assert res.done and res.truncated and not res.success


def test_restore_returns_to_the_saved_state():
    with SyntheticRobot(SyntheticRobotConfig(seed=2)) as r:
        r.reset()
        r.act(np.array([0.5, 0.5, 0, 0]))
        snap = r.save_state()
        saved = r.observe()
        r.act(np.array([-1.0, -1.0, 1.0, 1.0]))
        back = r.restore_state(snap)
        np.testing.assert_array_equal(back.images["corner"], saved.images["corner"])
        np.testing.assert_array_equal(back.state, saved.state)
        assert r.act(np.zeros(4)).info["step"] == snap.step + 1


def test_bad_actions_and_settings_are_refused():
    with SyntheticRobot(SyntheticRobotConfig()) as r:
        with pytest.raises(RuntimeError, match="reset"):
            r.act(np.zeros(4))
        r.reset()
        with pytest.raises(ValueError, match="4 finite values"):
            r.act(np.zeros(3))
        with pytest.raises(ValueError, match="4 finite values"):
            r.act(np.array([np.nan, 0, 0, 0]))
    with pytest.raises(RuntimeError, match="not connected"):
        SyntheticRobot(SyntheticRobotConfig()).reset()
    with pytest.raises(ConfigError, match="`image_size`"):
        SyntheticRobotConfig(image_size=4)
    with pytest.raises(ConfigError, match="`task_id`"):
        SyntheticRobotConfig(task_id="a/b")

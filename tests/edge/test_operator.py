"""Operators: takeovers are marked, resets and returns end episodes; teleop adapters are
driven by recorded input streams."""

import numpy as np
import pytest

from vlac.edge.agent import run_episode
from vlac.edge.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from vlac.edge.operator import (
    KeyboardTeleop,
    Recorded,
    RequestReset,
    ReturnTo,
    ScriptedExpert,
    SpaceMouseState,
    SpaceMouseTeleop,
    TakeOver,
    random_keys,
)
from vlac.edge.policy import RandomPolicy
from vlac.edge.robot import Observation
from vlac.shared.episode import concat_steps

pytestmark = pytest.mark.filterwarnings("ignore")
OBS = Observation(images={}, proprio=np.zeros(4, np.float32), task="t")


class Sink:
    def __init__(self):
        self.parts, self.outcome = [], None

    def add(self, steps):
        self.parts.append(steps)

    def end(self, success, reason=""):
        self.outcome = (success, reason)

    @property
    def steps(self):
        return concat_steps(self.parts)


@pytest.fixture(scope="module")
def robot():
    with MetaWorldRobot(MetaWorldRobotConfig(task="push-v3", seed=0, max_steps=40)) as r:
        yield r


def test_takeover_steps_are_marked(robot):
    expert = ScriptedExpert("push-v3")
    policy = RandomPolicy(robot.spec, version=7)
    sink = Sink()
    calls = {"n": 0}

    class Engage(ScriptedExpert):
        def poll(self, obs):
            calls["n"] += 1
            if calls["n"] == 10:
                self.engage(5)
            return super().poll(obs)

    op = Engage("push-v3")
    res = run_episode(robot, policy, lambda _t: sink, operator=op)
    marks = sink.steps.intervention
    assert res.interventions == 5 and marks.sum() == 5
    assert marks[9:14].all() and not marks[:9].any()
    assert (sink.steps.logprob[marks] == 0).all()
    assert (sink.steps.logprob[~marks] < 0).all()
    assert (sink.steps.policy_version == 7).all()
    del expert


def test_reset_request_ends_the_episode(robot):
    stream = Recorded([[]] * 6 + [["x"]])
    sink = Sink()
    res = run_episode(robot, RandomPolicy(robot.spec), lambda _t: sink,
                      operator=KeyboardTeleop(stream))
    assert res.reason == "operator_reset" and res.steps == 6
    assert sink.outcome == (False, "operator_reset")


def test_return_to_saved_state(robot):
    sink1 = Sink()
    res = run_episode(robot, RandomPolicy(robot.spec), lambda _t: sink1,
                      operator=KeyboardTeleop(Recorded([[]] * 12 + [["b"]])),
                      snapshot_every=5)
    assert res.reason == "returned" and res.snapshot is not None and res.snapshot.step == 10
    saved_obs = res.snapshot.data["obs"]
    sink2 = Sink()
    run_episode(robot, RandomPolicy(robot.spec), lambda _t: sink2,
                start_from=res.snapshot,
                operator=KeyboardTeleop(Recorded([[]] * 3 + [["x"]])))
    np.testing.assert_array_equal(sink2.steps.images["corner"][0], saved_obs.images["corner"])


def test_keyboard_teleop_maps_a_recorded_stream():
    kb = KeyboardTeleop(Recorded([[], ["w"], ["d", "r"], [" "], [], ["t"], ["x"], ["b"]]),
                        step=0.5)
    assert kb.poll(OBS) is None  # nothing pressed: the policy acts
    a = kb.poll(OBS)
    assert isinstance(a, TakeOver)
    np.testing.assert_allclose(a.action, [0, 0.5, 0, -1])
    np.testing.assert_allclose(kb.poll(OBS).action, [0.5, 0, 0.5, -1])
    np.testing.assert_allclose(kb.poll(OBS).action, [0, 0, 0, 1])  # gripper toggled closed
    assert isinstance(kb.poll(OBS), TakeOver)  # takeover stays on after a movement
    assert kb.poll(OBS) is None  # "t" toggles it off
    assert isinstance(kb.poll(OBS), RequestReset)
    assert isinstance(kb.poll(OBS), ReturnTo)


def test_keyboard_random_stream_always_gives_valid_actions():
    kb = KeyboardTeleop(Recorded(random_keys(500, seed=1)))
    for _ in range(500):
        cmd = kb.poll(OBS)
        if isinstance(cmd, TakeOver):
            assert cmd.action.shape == (4,) and np.abs(cmd.action).max() <= 1


def test_spacemouse_teleop_maps_a_recorded_stream():
    states = [SpaceMouseState(0.01, 0, 0), SpaceMouseState(0.6, -0.2, 1.5),
              SpaceMouseState(0, 0, 0, (1, 0)), SpaceMouseState(0, 0, 0, (1, 0)),
              SpaceMouseState(0, 0, 0, (0, 1))]
    sm = SpaceMouseTeleop(Recorded(states, SpaceMouseState()), scale=1.0)
    assert sm.poll(OBS) is None  # inside the dead zone
    np.testing.assert_allclose(sm.poll(OBS).action, [0.6, -0.2, 1.0, -1])
    np.testing.assert_allclose(sm.poll(OBS).action, [0, 0, 0, 1])  # left button: gripper
    assert sm.poll(OBS) is None  # button held, not pressed again
    assert isinstance(sm.poll(OBS), RequestReset)


def test_expert_needs_simulator_state():
    with pytest.raises(RuntimeError, match="simulator state"):
        ScriptedExpert("push-v3", always=True).poll(OBS)

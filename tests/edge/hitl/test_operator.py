"""Operators: takeovers are marked, resets and returns end episodes; teleop adapters are
driven by recorded input streams."""

import numpy as np
import pytest

from vlac.edge.agent import run_episode
from vlac.edge.hitl.operator import (
    KeyboardTeleop,
    Recorded,
    RequestReset,
    ReturnTo,
    ScriptedExpert,
    SpaceMouseState,
    SpaceMouseTeleop,
    StallWatch,
    TakeOver,
    random_keys,
)
from vlac.edge.policy import RandomPolicy
from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
from vlac.edge.robots.robot import Observation
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


class ScriptedProgress:
    """Progress that rises until step ``peak`` (one call per check), then stays flat."""

    def __init__(self, peak_checks: int):
        self.calls, self.peak = 0, peak_checks

    def __call__(self, first, now):
        self.calls += 1
        return 0.1 * min(self.calls, self.peak)


def guided_episode(robot, guide_steps: int):
    """An episode whose progress rises for 2 checks (every 5 steps) and then stalls."""
    watch = StallWatch(ScriptedProgress(2), on_stall="guide",
                       guide=ScriptedExpert("push-v3", seed=0), check_every=5, patience=2,
                       guide_steps=guide_steps, max_triggers=1)
    sink = Sink()
    res = run_episode(robot, RandomPolicy(robot.spec), lambda _t: sink, operator=watch)
    return watch, sink, res


def test_stall_watch_hands_over_to_the_guide_when_progress_stalls(robot):
    watch, sink, res = guided_episode(robot, guide_steps=6)
    marked = sink.steps.intervention
    # checks at steps 5, 10 (rising), 15, 20 (flat): the guide takes over at step 20 for 6
    assert watch.triggers == 1 and res.interventions == 6
    assert marked[19:25].all() and marked.sum() == 6
    assert (sink.steps.logprob[marked] == 0).all()


def test_stall_watch_guide_steps_0_keeps_control_to_the_episode_end(robot):
    watch, sink, res = guided_episode(robot, guide_steps=0)
    # the guide takes over at step 20 and keeps control until the 40-step limit
    assert res.steps == 40 and res.interventions == 21
    assert sink.steps.intervention[19:].all() and not sink.steps.intervention[:19].any()
    watch.on_episode_start("")  # a new episode starts with the policy in control
    assert not watch.guide.engaged


def test_stall_watch_returns_to_the_most_promising_state(robot):
    watch = StallWatch(ScriptedProgress(3), on_stall="return", check_every=4, patience=1)
    sink = Sink()
    res = run_episode(robot, RandomPolicy(robot.spec), lambda _t: sink, operator=watch)
    # bests at polls 4, 8, 12 snapshot the state after that step; the flat poll 16 returns
    assert res.reason == "returned" and res.steps == 15 and res.snapshot.step == 12
    again = Sink()
    run_episode(robot, RandomPolicy(robot.spec), lambda _t: again, start_from=res.snapshot,
                operator=KeyboardTeleop(Recorded([[]] * 2 + [["x"]])))
    np.testing.assert_array_equal(again.steps.images["corner"][0],
                                  res.snapshot.data["obs"].images["corner"])


def test_stall_watch_skips_checks_without_an_answer_and_needs_a_guide():
    watch = StallWatch(lambda a, b: None, on_stall="return", check_every=1, patience=1)
    assert all(watch.poll(OBS) is None for _ in range(10)) and watch.triggers == 0
    with pytest.raises(ValueError, match="needs a guide"):
        StallWatch(lambda a, b: 0.0, on_stall="guide")


def test_critic_progress_asks_the_service_without_blocking(robot):
    """The robot's progress client against a real reward server (ROUTER on loopback) that
    scores with a scripted critic standing in for the trained one."""
    import threading
    import time

    from vlac.cloud.critic.service import RewardServer
    from vlac.edge.hitl.progress import CriticProgress

    class Brightness:
        def episode_rewards(self, task, frames, stride=1, reference=None, from_first=False):
            d = np.diff(frames.reshape(len(frames), -1).mean(1)) / 255
            return d.astype(np.float32), np.zeros(len(d), np.float32)

    server = RewardServer(Brightness(), "tcp://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    progress = CriticProgress(server.wait_ready())
    first = robot.reset()
    brighter = Observation({"corner": np.full_like(first.images["corner"], 255)},
                           first.proprio, first.task)
    try:
        t0 = time.monotonic()
        assert progress(first, brighter) is None  # asked; never waits
        assert time.monotonic() - t0 < 0.5
        answer = None
        for _ in range(200):
            time.sleep(0.01)
            answer = progress(first, brighter)
            if answer is not None:
                break
        assert answer is not None and answer > 0 and progress.answered == 1
    finally:
        progress.close()
        server.stop()

"""The simulated robot: shapes, upright images, goal hiding, experts, save/restore."""

import numpy as np
import pytest

from vlac.edge.hitl.operator import ScriptedExpert
from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
from vlac.shared import tasks
from vlac.shared.config import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def push():
    with MetaWorldRobot(MetaWorldRobotConfig(task="push-v3", seed=3)) as r:
        yield r


def test_observation_shapes_and_dtypes(push):
    obs = push.reset()
    img = obs.images["corner"]
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
    assert obs.proprio.shape == (4,) and obs.proprio.dtype == np.float32
    assert obs.task in tasks.instructions("push-v3")
    res = push.act(np.zeros(4))
    assert res.observation.images["corner"].shape == (128, 128, 3)
    assert push.spec.cameras == {"corner": (128, 128, 3)}
    with pytest.raises(ValueError, match="4 values"):
        push.act(np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        push.act(np.array([np.nan, 0, 0, 0]))


def _marker_pixels(robot, snap):
    """Pixels of the goal marker: the image with it shown minus the image with it hidden."""
    robot.set_goal_visible(True)
    shown = robot._render().astype(int)
    robot.set_goal_visible(False)
    hidden = robot._render().astype(int)
    robot.set_goal_visible(True)
    return np.nonzero(np.abs(shown - hidden).sum(axis=2) > 30)


def test_images_are_upright_and_goal_marker_can_be_hidden(push):
    """Raise the goal marker in the world: in an upright image its pixels move up (to smaller
    rows); in an upside-down image they would move down."""
    push.reset()
    snap = push.save_state()
    rows, _ = _marker_pixels(push, snap)
    assert len(rows) > 3, "hiding the goal changes nothing"
    goal = push._env.data.site("goal").xpos.copy()
    push._env._set_pos_site("goal", goal + np.array([0.0, 0.0, 0.12]))
    higher, _ = _marker_pixels(push, snap)
    push._env._set_pos_site("goal", goal)
    assert len(higher) > 3
    assert higher.mean() < rows.mean() - 5
    hidden_cfg = MetaWorldRobotConfig(task="push-v3", seed=3, hide_goal=True)
    with MetaWorldRobot(hidden_cfg) as r:
        r.reset()
        img = r.observe().images["corner"]
        r.set_goal_visible(True)
        assert (np.abs(r._render().astype(int) - img).sum(axis=2) > 30).sum() > 3


def test_save_restore_returns_the_same_observation(push):
    expert = ScriptedExpert("push-v3", always=True)
    obs = push.reset()
    for _ in range(8):
        obs = push.act(expert.poll(obs).action).observation
    snap = push.save_state()
    for _ in range(12):
        push.act(expert.poll(push.observe()).action)
    back = push.restore_state(snap)
    np.testing.assert_array_equal(back.images["corner"], obs.images["corner"])
    np.testing.assert_array_equal(back.proprio, obs.proprio)
    a = expert.poll(back).action
    first = push.act(a).observation
    push.restore_state(snap)
    second = push.act(a).observation
    np.testing.assert_array_equal(first.state, second.state)  # the physics restored too


@pytest.mark.parametrize("task", ["push-v3", "drawer-open-v3"])
def test_expert_solves_default_tasks(task):
    with MetaWorldRobot(MetaWorldRobotConfig(task=task, seed=11)) as robot:
        expert = ScriptedExpert(task, always=True)
        wins = 0
        for _ in range(2):
            obs = robot.reset()
            while True:
                res = robot.act(expert.poll(obs).action)
                obs = res.observation
                if res.done:
                    break
            wins += res.success
        assert wins == 2


def test_layouts_and_instructions_vary_but_are_seeded():
    def run(seed):
        with MetaWorldRobot(MetaWorldRobotConfig(task="reach-v3", seed=seed)) as r:
            out = []
            for _ in range(4):
                obs = r.reset()
                out.append((obs.task, tuple(np.round(r._env._target_pos, 4))))
            return out
    a, b = run(5), run(5)
    assert a == b
    assert len({t for t, _ in a}) > 1 and len({g for _, g in a}) > 1


def test_layout_repeats_start_consecutive_episodes_from_the_same_state():
    """Groups of rollouts from one start (``layout_repeats``): the same first image,
    proprioception and instruction k times, then a new draw; the learner's start
    fingerprint groups them and tells the groups apart."""
    from vlac.cloud.learner.episodes import start_fingerprint

    with MetaWorldRobot(MetaWorldRobotConfig(task="drawer-open-v3", seed=3,
                                             layout_repeats=3)) as r:
        starts = []
        for _ in range(6):
            obs = r.reset()
            starts.append((start_fingerprint(obs.images["corner"][None], obs.proprio[None]),
                           obs.task))
            for _ in range(3):  # move, so that a reset that forgot to reset would show
                r.act(np.array([1.0, 0.5, -0.5, 1.0]))
    assert starts[0] == starts[1] == starts[2] and starts[3] == starts[4] == starts[5]
    assert starts[0][0] != starts[3][0]
    with pytest.raises(ConfigError, match="`layout_repeats`"):
        MetaWorldRobotConfig(layout_repeats=0)


def test_action_repeat_holds_each_action_for_k_simulator_steps():
    """``action_repeat`` k: one act() is k simulator steps of the same action, the same
    trajectory as k act() calls at k = 1; the step limit still counts simulator steps, and
    a success inside a hold ends the episode at once."""
    action = np.array([0.6, -0.4, 0.3, 1.0])

    def run(k, acts, **kw):
        cfg = MetaWorldRobotConfig(task="reach-v3", seed=2, action_repeat=k, **kw)
        with MetaWorldRobot(cfg) as r:
            r.reset()
            res = [r.act(action) for _ in range(acts)]
            return res, r._env.data.qpos.copy()

    held, q_held = run(3, 2)
    plain, q_plain = run(1, 6)
    np.testing.assert_array_equal(q_held, q_plain)
    last_held, last_plain = held[-1].observation, plain[-1].observation
    np.testing.assert_array_equal(last_held.proprio, last_plain.proprio)
    np.testing.assert_array_equal(last_held.images["corner"], last_plain.images["corner"])
    assert held[-1].info["step"] == 6
    # 7 simulator steps: the third hold stops after one step, at the limit
    limited, _ = run(3, 3, max_steps=7)
    assert [r.done for r in limited] == [False, False, True] and limited[-1].info["step"] == 7
    with MetaWorldRobot(MetaWorldRobotConfig(task="reach-v3", seed=2, action_repeat=50,
                                             max_steps=500)) as r:
        obs, steps = r.reset(), 0
        while True:  # the scripted expert's action, held: success ends the hold early
            res = r.act(r.expert_action(obs))
            obs, steps = res.observation, res.info["step"]
            if res.done:
                break
        assert res.success and steps % 50 != 0
    with pytest.raises(ConfigError, match="`action_repeat`"):
        MetaWorldRobotConfig(action_repeat=0)
    with pytest.raises(ConfigError, match="`action_repeat`"):
        MetaWorldRobotConfig(action_repeat=200, max_steps=150)


def test_config_errors():
    with pytest.raises(ConfigError, match="`task`"):
        MetaWorldRobotConfig(task="push")
    with pytest.raises(ConfigError, match="`camera`"):
        MetaWorldRobotConfig(camera="nose")
    with pytest.raises(ValueError, match="unknown Meta-World task"):
        MetaWorldRobot(MetaWorldRobotConfig(task="fly-v3")).connect()


def test_paraphrases():
    assert len(tasks.instructions("drawer-open-v3")) >= 3
    assert tasks.instructions("stick-pull-v3")[0] == "grab the stick and pull the box with it"
    # a task nobody wrote sentences for gets them templated from its name
    assert tasks.instructions("stack-cups-v3")[:2] == ["stack cups", "please stack cups"]


def test_two_robots_in_one_process_each_render_their_own_scene():
    """Each robot owns a GL context; without making it current before rendering, the first
    robot read back the second one's framebuffer (a benchmark's policies saw garbage)."""
    with MetaWorldRobot(MetaWorldRobotConfig(task="button-press-v3", seed=1)) as a:
        first = a.reset().images["corner"].astype(int)
        with MetaWorldRobot(MetaWorldRobotConfig(task="drawer-open-v3", seed=2)) as b:
            b.reset()
            still = np.zeros(4, np.float32)
            a_img = a.act(still).observation.images["corner"].astype(int)
            b_img = b.act(still).observation.images["corner"].astype(int)
    assert np.abs(a_img - first).mean() < 3  # the same scene, one still step later
    assert np.abs(a_img - b_img).mean() > 3

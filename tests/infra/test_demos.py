import numpy as np
import pytest

from vlac.cloud.store.episodes import EpisodeStore
from vlac.infra.cli import main as cli
from vlac.infra.demos import DemosCollectConfig, main
from vlac.shared.config import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


def test_collect_stores_expert_episodes_once(tmp_path, capsys):
    cfg = DemosCollectConfig(tasks=["reach-v3", "button-press-v3"], episodes=2, noise=0.05,
                             store_root=tmp_path, max_steps=120)
    results = main(cfg)
    out = capsys.readouterr().out
    assert "success" in out and "reach-v3" in out
    store = EpisodeStore(tmp_path)
    eps = store.list_episodes()
    assert len(eps) == 4 and {e["source"] for e in eps} == {"demo"}
    assert {e["task_id"] for e in eps} == {"reach-v3", "button-press-v3"}
    for e in eps:
        ep = store.load_episode(e["robot_id"], e["episode_id"])
        assert ep.steps.intervention.all()  # every step is the operator's
        assert ep.outcome.success == (ep.outcome.reason == "success")
        assert len(ep) == e["n_steps"] <= 120
    assert results["reach-v3"]["success_rate"] == 1.0
    again = main(cfg)
    assert again["reach-v3"]["stored"] == 0 and len(store.list_episodes()) == 4


def test_noise_knob_makes_failures(tmp_path):
    res = main(DemosCollectConfig(tasks=["push-v3"], episodes=3, noise=1.5, max_steps=40,
                                  store_root=tmp_path))
    assert res["push-v3"]["success_rate"] < 1.0
    eps = EpisodeStore(tmp_path).list_episodes()
    assert any(not e["outcome"]["success"] for e in eps)
    actions = np.concatenate([EpisodeStore(tmp_path).load_episode(e["robot_id"],
                                                                  e["episode_id"]).steps.action
                              for e in eps])
    assert actions.std() > 0.3


def test_an_expert_that_stops_part_way_makes_failures_with_some_progress(tmp_path):
    """stop_after 12: the expert acts for 3-12 steps, then the arm holds still; reach needs
    about 35-70 expert steps, so every episode fails, at the step limit."""
    res = main(DemosCollectConfig(tasks=["reach-v3"], episodes=3, noise=0.0, max_steps=30,
                                  stop_after=12, store_root=tmp_path))
    assert res["reach-v3"]["success_rate"] == 0.0
    store = EpisodeStore(tmp_path)
    eps = store.list_episodes()
    assert len(eps) == 3 and all("stop12" in e["episode_id"] for e in eps)
    for e in eps:
        steps = store.load_episode(e["robot_id"], e["episode_id"]).steps
        taken = int(steps.intervention.sum())
        assert len(steps.intervention) == 30 and 3 <= taken <= 12
        assert steps.intervention[:taken].all()  # the expert first, then never again
        assert np.abs(steps.action[taken:]).max() < 0.01  # holding still
        assert np.abs(steps.action[:taken]).max() > 0.1
    with pytest.raises(ConfigError, match="`stop_after`"):
        DemosCollectConfig(stop_after=-1)


def test_cli_rejects_unknown_tasks(tmp_path, capsys):
    assert cli(["demos", "collect", "--tasks", "fly-v3", "--store-root", str(tmp_path)]) == 2
    assert "unknown Meta-World task(s) ['fly-v3']" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="`episodes`"):
        DemosCollectConfig(episodes=0)

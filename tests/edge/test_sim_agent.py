"""A simulated robot streaming real Meta-World episodes through the spool into ingest."""

import pytest

from tests.helpers import ThreadIngest, ingest_config, sender_config
from vlac.edge.metaworld_robot import MetaWorldRobotConfig
from vlac.edge.sim_agent import SimAgentConfig, main

pytestmark = pytest.mark.filterwarnings("ignore")


def test_sim_robot_streams_episodes_with_marked_takeovers(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        cfg = SimAgentConfig(
            sender=sender_config(keyring, "robot-1", ingest.address, tmp_path / "spool"),
            robot=MetaWorldRobotConfig(task="push-v3", seed=4, max_steps=40),
            policy="random", takeover_prob=0.1, takeover_steps=5, episodes=2,
            chunk_steps=8, quiet=True)
        summary = main(cfg)
        assert summary["drained"] and summary["episodes"] == 2
        eps = ingest.store.list_episodes()
        assert len(eps) == 2 and {e["task_id"] for e in eps} == {"push-v3"}
        assert all(e["source"] == "policy" for e in eps)
        marked = 0
        for e in eps:
            ep = ingest.store.load_episode("robot-1", e["episode_id"])
            assert ep.steps.images["corner"].shape[1:] == (128, 128, 3)
            assert (ep.steps.logprob[~ep.steps.intervention] < 0).all()
            marked += int(ep.steps.intervention.sum())
        assert marked == summary["interventions"] > 0

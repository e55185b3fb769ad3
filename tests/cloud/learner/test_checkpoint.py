"""The learner's checkpoint carries the algorithm's own state: ``state_dict()`` goes in with
the engine's weights and optimizer, ``load_state_dict()`` gets it back on resume, and the
checkpoint names the algorithm that wrote it."""

import pytest

from tests.cloud.test_learner import TokenRewards, config, tiny_actor, write_episode
from vlac.cloud.learner.algorithms import ALGORITHMS, PPO, register
from vlac.cloud.learner.process import Learner
from vlac.cloud.models.encoders import ImageEncoder, TextEncoder
from vlac.cloud.store.episodes import EpisodeStore
from vlac.shared.config import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


class NotingPPO(PPO):
    """PPO with state of its own: a note, and every state it was handed back."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.note, self.loaded = None, []

    def state_dict(self):
        return {**super().state_dict(), "note": self.note}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.note = state["note"]
        self.loaded.append(state)


@pytest.fixture
def noting():
    register("noting-ppo")(NotingPPO)
    yield "noting-ppo"
    del ALGORITHMS["noting-ppo"]


def test_the_algorithm_state_round_trips_through_checkpoint_and_resume(tmp_path, noting):
    img, txt = ImageEncoder(), TextEncoder()
    tiny_actor(tmp_path / "init.pt")
    store = EpisodeStore(tmp_path / "store", fsync=False)
    for i in range(4):
        write_episode(store, "robot-0", f"ep-{i}", 10, success=i % 2 == 0, seed=i)

    def learner(out, name=noting):
        return Learner(config(tmp_path, out=tmp_path / out, checkpoint_every=1,
                              algorithm={"name": name}), TokenRewards(),
                       image_encoder=img, text_encoder=txt)

    first = learner("out")
    assert isinstance(first.algorithm, NotingPPO) and first.algorithm.loaded == []
    first.algorithm.note = {"seen": [1, 2], "why": "a test"}
    assert first.run()["version"] == 2 and first.algorithm.updates == 2
    saved = first.algorithm.state_dict()
    assert saved == {"updates": 2, "note": {"seen": [1, 2], "why": "a test"}}
    again = learner("out2")  # a fresh output folder: the object store alone
    assert again.version == 2 and again.algorithm.loaded == [saved]
    assert again.algorithm.state_dict() == saved
    # the checkpoint names its algorithm: another one refuses to resume from it, in words
    with pytest.raises(ConfigError, match=r"`algorithm.name`.*'noting-ppo'.*"
                                          r"--algorithm\.name noting-ppo"):
        learner("out3", name="ppo")

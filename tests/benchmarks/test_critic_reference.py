from types import SimpleNamespace

import numpy as np
import pytest
import torch

from benchmarks import critic_reference as cr
from vlac.cloud.critic.data import EpisodeFeatures, PairMix, PairSampler
from vlac.cloud.models.encoders import TextEncoder
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig
from vlac.shared import tasks

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def sampler_and_episodes():
    rng = np.random.default_rng(0)
    looks = {t: np.full(1280, float(k)) for k, t in enumerate(("reach-v3", "push-v3",
                                                               "door-open-v3"))}
    episodes = [EpisodeFeatures("r", f"{task}-{k}", task, task, True,
                                (look + rng.random((20, 16, 1280))).astype(np.float16))
                for task, look in looks.items() for k in range(2)]
    return PairSampler(episodes, TextEncoder(), PairMix(), seed=0), episodes


def test_the_same_pairs_meet_their_own_and_another_tasks_reference(sampler_and_episodes):
    sampler, episodes = sampler_and_episodes
    own, other, labels = cr.pair_rows(episodes, sampler, tasks.GENERIC_SENTENCES[0], 40)
    for a, b, label in zip(own, other, labels, strict=True):
        assert a[:3] == b[:3] and a[4] == label and 0 < label <= 1
        assert a[7] == a[0].task_id and b[7] != b[0].task_id


class ReadsReference:
    """A critic that says 1 where its reference looks like the frames (0 elsewhere), or,
    deaf, the frames' brightness."""

    def __init__(self, deaf: bool) -> None:
        self.deaf = deaf

    def critique(self, text, feat_a, feat_b, ref, ref_pos, ref_mask):
        frames = feat_b.float().mean(dim=(1, 2))
        if self.deaf:
            return SimpleNamespace(delta=frames)
        same = (ref.float().mean(dim=(1, 2)) - frames).abs() < 0.5
        return SimpleNamespace(delta=same.float())


def test_the_gap_is_what_the_reference_changes(sampler_and_episodes):
    sampler, episodes = sampler_and_episodes
    own, other, _ = cr.pair_rows(episodes, sampler, tasks.GENERIC_SENTENCES[0], 30)
    reads, deaf = ReadsReference(deaf=False), ReadsReference(deaf=True)
    assert cr.mean_delta(deaf, sampler, own) == cr.mean_delta(deaf, sampler, other)
    assert cr.mean_delta(reads, sampler, own) == 1.0
    assert cr.mean_delta(reads, sampler, other) == 0.0
    # a real critic goes through the same path
    model = SmallVLAC(VLACConfig(dropout=0.0)).eval()
    with torch.no_grad():
        assert -1 <= cr.mean_delta(model, sampler, own) <= 1

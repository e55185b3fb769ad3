"""`vlac critic train --backend transformers` on the tiny random InternVL of
tests/cloud/models: on frames whose brightness tells the time, the fine-tuned checkpoint's
critic loss on fixed held-out pairs falls, in full and through LoRA; the output folder loads
as a TransformersCritic; a longer run resumes from the checkpoint."""

import json

import numpy as np
import pytest
import torch

from tests.cloud.models.test_hf_critic import NO_TILES, raw_and_prepared
from vlac.cloud.critic.data import PairMix, PairSampler
from vlac.cloud.critic.hf_train import batch_of, load_frame_episodes
from vlac.cloud.models.hf_critic import TransformersCritic, prepare_checkpoint
from vlac.cloud.models.vlac import critic_loss_of_logits, delta_to_token
from vlac.cloud.store.episodes import EpisodeStore
from vlac.infra.cli import main as cli
from vlac.shared.config import ConfigError
from vlac.shared.episode import StepColumns

pytestmark = pytest.mark.filterwarnings("ignore")
torch.set_num_threads(1)

TASKS = ["button-press-v3", "drawer-open-v3"]


def brightening(n: int, seed: int) -> StepColumns:
    """Frames that get brighter step by step (progress is visible), a little noise."""
    rng = np.random.default_rng(seed)
    level = np.linspace(20, 235, n)[:, None, None, None]
    frames = np.clip(level + rng.normal(0, 8, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return StepColumns(images={"corner": frames}, proprio=np.zeros((n, 4), np.float32),
                       action=np.zeros((n, 4), np.float32),
                       action_tokens=np.zeros((n, 4), np.int32),
                       logprob=np.zeros(n, np.float32), policy_version=np.zeros(n, np.int64),
                       intervention=np.zeros(n, bool), timestamp=np.arange(n, dtype=np.float64))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_critic_train")
    raw_and_prepared(root, prepare_checkpoint)
    store = EpisodeStore(root / "store", fsync=False)
    for t, task in enumerate(TASKS):
        for i in range(4):
            store.write_episode("sim", f"{task}-{i}", f"do {task}", brightening(12, 10 * t + i),
                                True, source="demo", task_id=task)
    return root


def held_out_loss(path, root) -> float:
    """The critic loss of ``path`` on fixed pairs of the held-out (last) episodes."""
    critic = TransformersCritic(path, images_kwargs=NO_TILES)
    store = EpisodeStore(root / "store")
    eps = [e for e in load_frame_episodes(store, TASKS, "corner") if e.episode_id.endswith("3")]
    rows = PairSampler(eps, None, PairMix(with_reference=0.0), seed=5).sample_rows(48)
    tasks, a, b, targets = batch_of(rows)
    with torch.no_grad():
        p, d = critic.pair_logits(tasks, a, b, delta_to_token(targets["delta"]))
        return critic_loss_of_logits(p, d, targets, critic.bin_values)[1]["loss"]


def train(root, out, *extra):
    args = ["critic", "train", "--backend", "transformers", "--init", str(root / "ready"),
            "--store-root", str(root / "store"), "--tasks", ",".join(TASKS), "--out", str(out),
            "--holdout", "1", "--batch-size", "8", "--lr", "3e-3", "--threads", "1", *extra]
    assert cli(args) == 0
    return json.loads((out / "train_log.json").read_text())


def test_fine_tuning_lowers_the_critic_loss_and_resumes(setup, tmp_path):
    before = held_out_loss(setup / "ready", setup)
    log = train(setup, tmp_path / "out", "--steps", "40", "--checkpoint-every", "20")
    assert log["train_episodes"] == 6 and len(log["held_out"]) == 2
    after = held_out_loss(tmp_path / "out" / "critic", setup)
    assert after < before - 0.3, (before, after)
    again = train(setup, tmp_path / "out", "--steps", "50", "--checkpoint-every", "20")
    assert again["log"][0]["step"] == 0 and again["log"][-1]["step"] == 49  # one log, resumed
    assert [r["step"] for r in again["log"]].count(30) == 1


def test_lora_fine_tuning_saves_a_merged_checkpoint(setup, tmp_path):
    before = held_out_loss(setup / "ready", setup)
    train(setup, tmp_path / "out", "--steps", "40", "--lora-rank", "8", "--lr", "2e-2")
    saved = TransformersCritic(tmp_path / "out" / "critic", images_kwargs=NO_TILES)
    assert not any("lora_" in n for n, _ in saved.model.named_parameters())
    assert held_out_loss(tmp_path / "out" / "critic", setup) < before - 0.1


def test_bad_transformers_configs_are_refused(setup, tmp_path):
    from vlac.cloud.critic.train import CriticTrainConfig

    with pytest.raises(ConfigError, match="fine-tunes a checkpoint folder"):
        CriticTrainConfig(backend="transformers", init=tmp_path / "nothing")
    with pytest.raises(ConfigError, match="LoRA adapts a transformers critic only"):
        CriticTrainConfig(lora_rank=4)
    with pytest.raises(ConfigError, match="without reference frames yet"):
        CriticTrainConfig(backend="transformers", init=tmp_path, generic=0.2)
    with pytest.raises(ConfigError, match="`generic`"):
        CriticTrainConfig(generic=1.5)

"""Critic end to end on a tiny real dataset: train (DeepSpeed engine, checkpoint, resume),
evaluate, save/load, score raw frames, and serve rewards over ZeroMQ."""

import json
import threading

import numpy as np
import pytest

from vlac.cloud.critic.evaluate import CriticEvalConfig
from vlac.cloud.critic.evaluate import main as eval_main
from vlac.cloud.critic.model import SmallVLACCritic, accumulated_progress
from vlac.cloud.critic.service import (
    InProcessRewards,
    RewardClient,
    RewardServer,
)
from vlac.cloud.critic.train import CriticTrainConfig
from vlac.cloud.critic.train import main as train_main
from vlac.cloud.store.episodes import EpisodeStore
from vlac.infra.demos import DemosCollectConfig
from vlac.infra.demos import main as collect
from vlac.shared.config import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("critic")
    collect(DemosCollectConfig(tasks=["reach-v3", "button-press-v3"], episodes=3, noise=0.05,
                               max_steps=80, store_root=root / "store"))
    cfg = CriticTrainConfig(store_root=root / "store", out=root / "critic",
                            features=root / "features", tasks=["reach-v3"], holdout=1,
                            steps=30, batch_size=8, checkpoint_every=20)
    first = train_main(cfg)
    return root, cfg, first


def test_training_writes_a_loadable_critic_and_resumes(trained):
    _, cfg, _ = trained
    assert (cfg.out / "critic.pt").exists() and (cfg.out / "train_loss.png").exists()
    assert (cfg.out / "checkpoints" / "latest").read_text().strip() == "step30"
    log = json.loads((cfg.out / "train_log.json").read_text())
    assert log["held_out"] and log["steps"] == 30
    resumed = train_main(CriticTrainConfig(**{**vars(cfg), "steps": 40}))
    assert resumed["log"][0]["step"] == 0  # the earlier log was restored, not restarted
    assert (cfg.out / "checkpoints" / "latest").read_text().strip() == "step40"


def test_eval_reports_voc_negatives_and_done(trained):
    root, cfg, _ = trained
    res = eval_main(CriticEvalConfig(store_root=root / "store", critic=cfg.out / "critic.pt",
                                     out=root / "eval", features=root / "features",
                                     seen_tasks=["reach-v3"], unseen_tasks=["button-press-v3"],
                                     holdout=1))
    s = res["summary"]
    for k in ("voc_seen", "voc_unseen", "negatives_ok", "done_precision", "done_recall"):
        assert s[k] is not None and -1 <= s[k] <= 1
    assert s["voc_unseen_ref"] is not None  # one-shot reference from another demo
    assert set(res["voc"]["unseen"]) == {"button-press-v3"}
    row = res["voc"]["unseen"]["button-press-v3"]
    for k in ("voc_direct", "voc_direct_ref", "static", "reversed", "mismatched"):
        assert row[k] is not None and -1 <= row[k] <= 1, k
    assert s["ref_gain_unseen"] == pytest.approx(s["voc_unseen_direct_ref"]
                                                 - s["voc_unseen_direct"])
    assert 0 <= s["negatives_ok_unseen"] <= 1
    # the AUC needs failures of the task; the threshold chosen on seen tasks meets unseen ones
    assert (row["auc"] is None) == (row["failed"] == 0)
    assert res["done_transfer"]["unseen_frames"] > 0
    # the done threshold: chosen on one half of the episodes, judged on the other
    cal = res["done"]["calibration"]
    assert cal["min_precision"] == 0.9 and cal["val_frames"] > 0
    if cal["threshold"] is not None:
        assert cal["val_at_threshold"][0] >= 0.9
        assert s["done_threshold"] == cal["threshold"]
        assert s["done_precision_test"] == (cal["test_at_threshold"] or (None,))[0]
    else:
        assert s["done_threshold"] is None and s["done_precision_test"] is None
    assert (root / "eval" / "progress_curves.png").exists()


def test_critic_scores_raw_frames_and_episodes(trained):
    root, cfg, _ = trained
    critic = SmallVLACCritic.load(cfg.out / "critic.pt")
    store = EpisodeStore(root / "store")
    info = store.list_episodes()[0]
    frames = store.load_episode(info["robot_id"], info["episode_id"]).steps.images["corner"]
    delta, done = critic.critique([info["task"]] * 3, frames[:3], frames[5:8])
    assert delta.shape == done.shape == (3,)
    assert np.all(np.abs(delta) <= 1) and np.all((done >= 0) & (done <= 1))
    r, d = critic.episode_rewards(info["task"], frames[:12], stride=2, reference=frames[::10])
    assert r.shape == d.shape == (11,)
    assert accumulated_progress(r).shape == (12,)
    phi, _ = critic.episode_rewards(info["task"], frames[:6], from_first=True)
    direct, _ = critic.critique([info["task"]] * 5, frames[[0] * 5], frames[1:6])
    np.testing.assert_allclose(phi, direct, atol=1e-5)  # progress since the first frame
    with pytest.raises(ValueError, match="uint8 frames"):
        critic.critique(["t"], frames[:1].astype(np.float32), frames[:1])
    with pytest.raises(ValueError, match="one sentence per pair"):
        critic.critique(["t", "u"], frames[:1], frames[:1])
    with pytest.raises(FileNotFoundError, match="vlac critic train"):
        SmallVLACCritic.load(root / "nope.pt")


def test_reward_service_over_zeromq(trained):
    root, cfg, _ = trained
    critic = SmallVLACCritic.load(cfg.out / "critic.pt")
    server = RewardServer(critic, "tcp://127.0.0.1:0")
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    client = RewardClient(server.wait_ready(), timeout_s=30)
    try:
        store = EpisodeStore(root / "store")
        info = store.list_episodes()[0]
        frames = store.load_episode(info["robot_id"], info["episode_id"]).steps.images["corner"]
        delta, done = client.episode_rewards(info["task"], frames[:10])
        local = InProcessRewards(critic).episode_rewards(info["task"], frames[:10])
        np.testing.assert_allclose(delta, local[0], atol=1e-5)
        np.testing.assert_allclose(done, local[1], atol=1e-5)
        phi, _ = client.episode_rewards(info["task"], frames[:10], from_first=True)
        np.testing.assert_allclose(phi, InProcessRewards(critic).episode_rewards(
            info["task"], frames[:10], from_first=True)[0], atol=1e-5)
        with pytest.raises(ValueError, match="uint8 frames"):
            client.episode_rewards("t", frames[:4].astype(np.float32))
        with pytest.raises(ValueError, match="at least 2 frames"):
            client.episode_rewards("t", frames[:1])
        # garbage does not take the service down
        client._sock.send(b"\x00garbage")
        assert client.episode_rewards(info["task"], frames[:3])[0].shape == (2,)
        assert server.errors == 3 and server.served == 3
    finally:
        server.stop()
        t.join(5)
        client.close()


def test_reward_client_times_out_with_advice():
    client = RewardClient("tcp://127.0.0.1:1", timeout_s=0.3)
    with pytest.raises(TimeoutError, match="vlac critic serve"):
        client.episode_rewards("t", np.zeros((2, 8, 8, 3), np.uint8))
    client.close()


def test_reward_service_answers_a_critic_crash_and_keeps_serving():
    class Fragile:
        def episode_rewards(self, task, frames, stride=1, reference=None, from_first=False):
            if task == "boom":
                raise RuntimeError("scripted critic bug")
            return np.zeros(len(frames) - 1, np.float32), np.zeros(len(frames) - 1, np.float32)

    server = RewardServer(Fragile(), "tcp://127.0.0.1:0")
    t = threading.Thread(target=server.serve, daemon=True)
    t.start()
    client = RewardClient(server.wait_ready(), timeout_s=10)
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    try:
        with pytest.raises(ValueError, match="critic failed: RuntimeError"):
            client.episode_rewards("boom", frames)
        assert client.episode_rewards("fine", frames)[0].shape == (2,)
        assert server.errors == 1 and server.served == 1
    finally:
        server.stop()
        t.join(5)
        client.close()


def test_the_feature_settings_travel_with_the_critic(trained, tmp_path):
    _, cfg, _ = trained
    out = tmp_path / "grid4"
    train_main(CriticTrainConfig(**{**vars(cfg), "out": out, "steps": 3, "image_grid": 4,
                                    "feature_dropout": 0.3}))
    critic = SmallVLACCritic.load(out / "critic.pt")
    assert critic.model.cfg.image_grid == 4 and critic.model.cfg.feature_dropout == 0.3
    assert critic.model.n_img == 17
    with pytest.raises(ConfigError, match="image_grid"):
        CriticTrainConfig(image_grid=3)
    with pytest.raises(ConfigError, match="feature_dropout"):
        CriticTrainConfig(feature_dropout=1.0)

import random

import numpy as np
import pytest
import torch

from vlac.cloud.critic.data import EpisodeFeatures, PairMix, PairSampler
from vlac.cloud.models.vlac import (
    PROGRESS_BINS,
    SmallVLAC,
    VLACConfig,
    critic_loss,
    delta_to_token,
    soft_progress_targets,
    token_to_delta,
)

torch.manual_seed(0)


def batch(n=8, refs=False):
    b = {"text": torch.randn(n, 384), "feat_a": torch.randn(n, 16, 1280),
         "feat_b": torch.randn(n, 16, 1280), "delta": torch.rand(n) * 2 - 1,
         "done": torch.randint(0, 2, (n,)), "progress_mask": torch.ones(n)}
    if refs:
        b.update(ref=torch.randn(n, 4, 1280), ref_pos=torch.rand(n, 4),
                 ref_mask=torch.tensor([[True] * 4] * (n // 2) + [[False] * 4] * (n - n // 2)))
    return b


def test_tokens_round_trip_within_half_a_bin():
    d = torch.linspace(-1, 1, 999)
    back = token_to_delta(delta_to_token(d))
    assert (back - d).abs().max() <= 1 / (PROGRESS_BINS - 1) + 1e-6
    assert delta_to_token(torch.tensor([0.0])).item() == 100
    assert delta_to_token(torch.tensor([5.0, -5.0])).tolist() == [200, 0]


def test_soft_targets_peak_on_the_target_bin():
    t = soft_progress_targets(torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(t.sum(-1), torch.ones(2))
    assert t.argmax(-1).tolist() == [150, 0]


def test_progress_is_decoded_before_done():
    """Causal output mask: the progress logits never see the progress token; done does."""
    model = SmallVLAC(VLACConfig(dropout=0.0)).eval()
    b = batch(4, refs=True)
    p1, d1 = model(b["text"], b["feat_a"], b["feat_b"], torch.zeros(4, dtype=torch.long),
                   b["ref"], b["ref_pos"], b["ref_mask"])
    p2, d2 = model(b["text"], b["feat_a"], b["feat_b"], torch.full((4,), 200),
                   b["ref"], b["ref_pos"], b["ref_mask"])
    torch.testing.assert_close(p1, p2)
    assert not torch.allclose(d1, d2)
    out = model.critique(b["text"], b["feat_a"], b["feat_b"])
    assert out.delta.shape == (4,) and (out.delta.abs() <= 1).all()
    assert ((out.done_prob >= 0) & (out.done_prob <= 1)).all()


def test_masked_reference_rows_ignore_reference_content():
    model = SmallVLAC(VLACConfig(dropout=0.0)).eval()
    b = batch(4, refs=True)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    o1 = model.critique(b["text"], b["feat_a"], b["feat_b"], b["ref"], b["ref_pos"], mask)
    o2 = model.critique(b["text"], b["feat_a"], b["feat_b"], b["ref"] * 5, b["ref_pos"], mask)
    torch.testing.assert_close(o1.delta, o2.delta)


def test_loss_goes_down_when_fitting_a_batch():
    model = SmallVLAC(VLACConfig(dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    b = batch(16, refs=True)
    first = None
    for _ in range(60):
        loss, stats = critic_loss(model, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else stats["loss"]
    assert stats["loss"] < first * 0.5
    assert stats["delta_mae"] < 0.15


class FakeText:
    def encode(self, sentences):
        return np.stack([np.full(384, hash(s) % 97, np.float32) for s in sentences])


def fake_episode(task, n, success=True, k=0):
    feats = np.random.default_rng(k).normal(size=(n, 16, 1280)).astype(np.float16)
    return EpisodeFeatures("r", f"{task}-{k}", task, f"do {task}", success, feats)


def test_pair_labels():
    eps = [fake_episode("push-v3", 11, k=0), fake_episode("push-v3", 11, k=1),
           fake_episode("reach-v3", 11, k=2), fake_episode("push-v3", 9, False, k=3)]
    s = PairSampler(eps, FakeText(), PairMix(with_reference=0.5), seed=1)
    s.rng = random.Random(3)
    b = s.sample(400)
    assert ((b["delta"] >= -1) & (b["delta"] <= 1)).all()
    failed = b["progress_mask"] == 0
    assert failed.any() and (b["done"][failed] == 0).all()
    # same frame twice: zero progress
    same = (b["feat_a"] == b["feat_b"]).flatten(1).all(1) & ~failed
    assert same.any() and (b["delta"][same] == 0).all()
    assert (b["delta"] < 0).any() and (b["delta"] > 0).any()  # reversed and forward pairs
    assert (b["done"] == 1).any()
    assert b["ref_mask"].any() and (~b["ref_mask"]).any()


def test_generic_pairs_make_the_reference_the_task():
    """With a generic sentence the reference is always given: of the episode's own task with
    the ordinary label, or of another task with delta 0 and not done."""
    from vlac.shared.tasks import GENERIC_SENTENCES

    eps = [fake_episode("push-v3", 11, k=0), fake_episode("push-v3", 11, k=1),
           fake_episode("reach-v3", 11, k=2), fake_episode("reach-v3", 11, k=3)]
    s = PairSampler(eps, FakeText(), PairMix(generic=1.0, with_reference=0.0, failed=0.0,
                                             mismatched=0.0, static=0.0), seed=1)
    rows = s.sample_rows(300)
    assert all(r[3] in GENERIC_SENTENCES and r[7] is not None for r in rows)
    own = [r for r in rows if r[7] == r[0].task_id]
    other = [r for r in rows if r[7] != r[0].task_id]
    assert 100 < len(own) < 200 and len(other) == 300 - len(own)
    assert all(r[4] == (r[2] - r[1]) / 10 for r in own)
    assert all(r[4] == 0.0 and r[5] == 0 and r[6] == 1 for r in other)
    b = s._collate(rows)
    assert b["ref_mask"].all()  # every generic pair has its reference
    # a reference's frames are those of an episode of the named task, never the pair's own
    ref0 = eps[1].reference()[0] if rows[0][0] is eps[0] and rows[0][7] == "push-v3" else None
    if ref0 is not None:
        np.testing.assert_allclose(b["ref"][0].numpy(), ref0)
    # without generic pairs no row names a reference task
    plain = PairSampler(eps, FakeText(), PairMix(), seed=1).sample_rows(200)
    assert all(r[7] is None for r in plain)


def test_sampler_needs_successful_episodes():
    with pytest.raises(ValueError, match="vlac demos collect"):
        PairSampler([fake_episode("push-v3", 5, False)], FakeText())


def test_feature_dropout_perturbs_training_only_and_reaches_the_reference():
    model = SmallVLAC(VLACConfig(dropout=0.0, feature_dropout=0.5))
    b = batch(4, refs=True)
    args = (b["text"], b["feat_a"], b["feat_b"], torch.zeros(4, dtype=torch.long),
            b["ref"], b["ref_pos"], b["ref_mask"])
    model.eval()
    torch.testing.assert_close(model(*args)[0], model(*args)[0])
    plain = SmallVLAC(VLACConfig(dropout=0.0))
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(*args)[0], plain.eval()(*args)[0])
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(*args)[0], model(*args)[0])
    # with the observations' features zeroed, only the reference's dropout is left to vary
    zero = (args[0], args[1] * 0, args[2] * 0, *args[3:])
    assert not torch.allclose(model(*zero)[0], model(*zero)[0])


def test_the_whole_cached_grid_gives_seventeen_tokens_per_image():
    model = SmallVLAC(VLACConfig(image_grid=4))
    feats = torch.randn(3, 16, 1280)
    tokens = model.image_tokens(feats)
    assert tokens.shape == (3, 17, 1280)
    torch.testing.assert_close(tokens[:, 1:], feats)  # pooling 4x4 to 4x4 is the identity
    b = batch(3, refs=True)
    out = model.eval().critique(b["text"], b["feat_a"], b["feat_b"])
    assert out.delta.shape == (3,)

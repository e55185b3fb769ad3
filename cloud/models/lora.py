"""LoRA adapters (peft) on a transformers critic or actor, the one way both are made.

Adapters on the attention projections alone cannot learn the project's own tokens: a freshly
prepared checkpoint gives the new critic or action tokens equal rows in the input embeddings
and the LM head (``hf_critic.add_tokens``), so their distribution is uniform whatever the
hidden state. The rows of those tokens (and only those) are therefore trained as well, with
peft's trainable tokens, in both matrices; everything else stays frozen. ``merged`` gives a
plain checkpoint back (what vLLM and the ONNX export load).
"""

from __future__ import annotations

import copy

from vlac.shared.config import ConfigError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # attention of Qwen2/InternLM/Llama


def with_lora(model, rank: int, alpha: float, targets: list[str], token_ids: list[int], *,
              field: str = "lora_targets"):
    """``model`` with adapters of ``rank`` injected in place into the modules named
    ``targets``, and the rows ``token_ids`` of its input embeddings and LM head trainable;
    returns the ``PeftModel`` (keep it for ``merged``). ``field``: the config field that
    named ``targets``, for the error when none matches."""
    from peft import LoraConfig, get_peft_model

    emb = _module_name(model, model.get_input_embeddings())
    head = _module_name(model, model.get_output_embeddings())
    tokens = {emb: list(token_ids)}
    if head and head != emb:
        tokens[head] = list(token_ids)
    try:
        return get_peft_model(model, LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
            trainable_token_indices=tokens))
    except ValueError as e:  # no module matched the targets
        raise ConfigError(f"config field `{field}`: {e}") from e


def merged(peft_model):
    """A copy of the model with the adapters and trained token rows merged in."""
    return copy.deepcopy(peft_model).merge_and_unload()


def _module_name(model, module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    return ""

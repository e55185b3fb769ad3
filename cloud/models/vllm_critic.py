"""The transformers critic's checkpoint served by vLLM: the same decode, batched by its engine.

``VLLMCritic`` implements the ``Critic`` protocol (``critique_output``; ``critique`` and
``episode_rewards`` come from ``hf_critic.PairScoring``) on a checkpoint made by
``hf_critic.prepare_checkpoint`` and fine-tuned, with the prompt and decode of
``TransformersCritic``:

1. every pair's prompt (``critic_prompt``: reference frames, sentence, image 1, image 2, the
   question) is one vLLM request whose next token is restricted to the 201 progress tokens
   (``allowed_token_ids``) and whose log-probabilities come back for all 201 of them; the
   engine is built with ``logprobs_mode="processed_logprobs"``, so they are renormalised over
   the allowed set, which is the transformers adapter's softmax over the progress logits. The
   delta is their expectation; the argmax is the emitted progress token;
2. the same prompt with that argmax token appended is a second request restricted to the two
   done tokens; the done probability is the softmax over them.

All pairs of a call go to the engine as one list per step, so a whole episode (T - 1 pairs) is
one batched pass per step and vLLM schedules the batch itself. With prefix caching (on by
default in vLLM) the second step reuses the first step's prompt cache where the engine can.

Only the log-probabilities come back from vLLM, so ``CriticOutput.progress_logits`` and
``done_logits`` hold log-probabilities (the logits up to a constant per row: the same softmax).

vLLM pins its own torch and transformers, so it lives in a venv of its own
(``infra/vllm/install.sh``); importing this module elsewhere works, building a ``VLLMCritic``
raises an ImportError naming that script. ``LLM(...)`` starts worker processes: build it under
``if __name__ == "__main__":``. On a CPU-only machine vLLM's CPU build runs float32 and sizes
its KV cache by ``kv_cache_bytes``; on GPUs pass ``dtype="bfloat16"`` and
``engine_args={"gpu_memory_utilization": 0.85}`` (see infra/config/critic.yaml).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from vlac.cloud.critic.model import _check_frames
from vlac.cloud.models.hf_critic import (
    CRITIC_TOKENS,
    DONE_TOKENS,
    PROGRESS_TOKENS,
    PairScoring,
    critic_prompt,
    load_processor,
)
from vlac.cloud.models.vlac import PROGRESS_BINS, CriticOutput, token_to_delta

log = logging.getLogger(__name__)

INSTALL_HINT = ("vLLM is not installed in this environment; it runs in a venv of its own: "
                "`infra/vllm/install.sh` (then run `.cache/vllm-venv/bin/vlac critic serve "
                "--backend vllm ...`)")


# The prompt text is complete as critic_prompt makes it (chat template, BOS where the template
# puts one): the transformers adapter tokenizes it with add_special_tokens=False, and so must
# vLLM, or a tokenizer that wraps every text (BERT's [CLS] ... [SEP]) changes what is scored.
_PROMPT_AS_IS = {"tokenization_kwargs": {"add_special_tokens": False}}


def _vllm():
    try:
        import vllm
    except ImportError as e:  # the project's own venv: vLLM pins another torch/transformers
        raise ImportError(INSTALL_HINT) from e
    return vllm


def token_ids(tokenizer, path: Path) -> list[int]:
    """The ids of the 201 progress and 2 done tokens; a checkpoint without them is refused."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in CRITIC_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"{path}: the tokenizer lacks {len(missing)} of the {len(CRITIC_TOKENS)} "
            f"progress/done tokens (e.g. {missing[0]}). Run vlac.cloud.models.hf_critic."
            "prepare_checkpoint(model, processor, out_dir) on the base checkpoint, fine-tune "
            "it, and serve the result")
    return [vocab[t] for t in CRITIC_TOKENS]


def distribution(logprobs: dict[int, Any], ids: list[int], what: str) -> np.ndarray:
    """Log-probabilities over ``ids`` (in order) from one position's vLLM logprobs dict."""
    missing = [i for i in ids if i not in logprobs]
    if missing:
        raise RuntimeError(f"vLLM returned no log-probability for {len(missing)} of the "
                           f"{len(ids)} {what} tokens; the engine needs max_logprobs >= "
                           f"{len(ids)} (VLLMCritic sets it)")
    return np.array([logprobs[i].logprob for i in ids], np.float64)


class VLLMCritic(PairScoring):
    """The ``Critic`` protocol on a prepared and fine-tuned image-text-to-text checkpoint,
    decoded by a vLLM engine."""

    def __init__(self, path: str | Path, *, dtype: str = "float32",
                 max_reference_frames: int = 8, max_model_len: int = 4096,
                 kv_cache_bytes: int | None = 512 << 20,
                 images_kwargs: dict[str, Any] | None = None,
                 engine_args: dict[str, Any] | None = None, seed: int = 0) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"no checkpoint folder at {path}: expected a local directory with a "
                "transformers image-text-to-text model and its processor (made by "
                "prepare_checkpoint)")
        if max_reference_frames < 0:
            raise ValueError(f"max_reference_frames must be >= 0, got {max_reference_frames}")
        vllm = _vllm()
        self.path = path
        self.processor = load_processor(path)
        ids = token_ids(self.processor.tokenizer, path)
        self.progress_ids, self.done_ids = ids[:PROGRESS_BINS], ids[PROGRESS_BINS:]
        self.max_reference_frames = max_reference_frames
        self.bin_values = token_to_delta(torch.arange(PROGRESS_BINS)).double().numpy()
        kw: dict[str, Any] = {
            "model": str(path), "dtype": dtype, "seed": seed, "max_model_len": max_model_len,
            "max_logprobs": PROGRESS_BINS, "logprobs_mode": "processed_logprobs",
            "limit_mm_per_prompt": {"image": 2 + max_reference_frames},
        }
        if kv_cache_bytes:
            kw["kv_cache_memory_bytes"] = int(kv_cache_bytes)
        if images_kwargs:
            kw["mm_processor_kwargs"] = dict(images_kwargs)
        kw.update(engine_args or {})
        self.llm = vllm.LLM(**kw)
        self._progress = vllm.SamplingParams(max_tokens=1, temperature=0.0,
                                             allowed_token_ids=self.progress_ids,
                                             logprobs=PROGRESS_BINS)
        self._done = vllm.SamplingParams(max_tokens=1, temperature=0.0,
                                         allowed_token_ids=self.done_ids, logprobs=2)

    # ------------------------------------------------------------------ inputs
    def requests(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                 reference: np.ndarray | None = None) -> list[dict[str, Any]]:
        """One vLLM prompt per pair: the text of ``critic_prompt`` and its images (the
        reference frames, image 1, image 2)."""
        a, b = _check_frames("obs_a", obs_a), _check_frames("obs_b", obs_b)
        if a.shape != b.shape or len(tasks) != len(a):
            raise ValueError(f"need one sentence per pair and equal shapes: {len(tasks)} "
                             f"sentences, obs_a {a.shape}, obs_b {b.shape}")
        ref = []
        if reference is not None:
            ref = [Image.fromarray(f) for f in _check_frames("reference", reference)]
            if len(ref) > self.max_reference_frames:
                raise ValueError(f"{len(ref)} reference frames, but this critic was started "
                                 f"for at most {self.max_reference_frames}; subsample the "
                                 "reference or raise max_reference_frames")
        texts: dict[str, str] = {}
        out = []
        for t, fa, fb in zip(tasks, a, b, strict=True):
            if t not in texts:
                texts[t] = critic_prompt(self.processor, t, len(ref))
            out.append({"prompt": texts[t], "multi_modal_data": {
                "image": [*ref, Image.fromarray(fa), Image.fromarray(fb)]}})
        return out

    def prompt_token_ids(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                         reference: np.ndarray | None = None) -> list[list[int]]:
        """The token ids vLLM scores for each pair's first step (images expanded), to check
        them against another decoder's."""
        outs = self.llm.generate(self.requests(list(tasks), obs_a, obs_b, reference),
                                 self._progress, use_tqdm=False, **_PROMPT_AS_IS)
        return [list(o.prompt_token_ids) for o in outs]

    # ------------------------------------------------------------------ scoring
    def critique_output(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                        reference: np.ndarray | None = None) -> CriticOutput:
        """Like ``critique``, with the argmax progress tokens and the log-probabilities of
        both steps (CPU tensors)."""
        reqs = self.requests(list(tasks), obs_a, obs_b, reference)
        if not reqs:
            empty = torch.zeros(0)
            return CriticOutput(empty, empty, empty.long(), torch.zeros(0, PROGRESS_BINS),
                                torch.zeros(0, 2))
        first = self.llm.generate(reqs, self._progress, use_tqdm=False, **_PROMPT_AS_IS)
        p_logp = np.stack([distribution(o.outputs[0].logprobs[0], self.progress_ids,
                                        "progress") for o in first])
        token = p_logp.argmax(-1)
        second = [{**r, "prompt": r["prompt"] + PROGRESS_TOKENS[k]}
                  for r, k in zip(reqs, token, strict=True)]
        done_out = self.llm.generate(second, self._done, use_tqdm=False, **_PROMPT_AS_IS)
        d_logp = np.stack([distribution(o.outputs[0].logprobs[0], self.done_ids, "done")
                           for o in done_out])
        probs = np.exp(p_logp - p_logp.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        d = np.exp(d_logp - d_logp.max(-1, keepdims=True))
        return CriticOutput(delta=torch.from_numpy(probs @ self.bin_values).float(),
                            done_prob=torch.from_numpy(d[:, 1] / d.sum(-1)).float(),
                            progress_token=torch.from_numpy(token),
                            progress_logits=torch.from_numpy(p_logp).float(),
                            done_logits=torch.from_numpy(d_logp).float())


__all__ = ["DONE_TOKENS", "INSTALL_HINT", "VLLMCritic"]

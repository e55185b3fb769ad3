"""A critic backed by a transformers image-text-to-text checkpoint (InternVL in production).

``TransformersCritic`` implements the same ``Critic`` protocol as ``SmallVLACCritic``
(``critique(tasks, obs_a, obs_b, reference=None) -> (delta, done_prob)``) and the same
``episode_rewards``, but the scoring is done by a vision-language model that was fine-tuned to
answer with two tokens, exactly as in the VLAC paper and ``vlac.cloud.models.vlac``:

- a progress token ``<vlac_pKKK>`` (K = 0..200; token k means delta = -1 + 2k/200): the
  decoded delta is the expectation of the next-token distribution restricted to these 201
  tokens, and the emitted token is its argmax;
- then, given that argmax token, a done token ``<vlac_done0>`` / ``<vlac_done1>``: the done
  probability is the softmax over those two logits.

Per pair, the prompt is one user turn (the processor's chat template when it has one, else a
plain prompt with the processor's image token): the reference demonstration frames first if
given (K extra images), then the task sentence, image 1 (earlier observation), image 2 (later
observation) and the question ``QUESTION``; see ``critic_messages`` / ``critic_prompt``.
The fine-tuning data must use the same prompt, with ``target_text(delta, done)`` as the
assistant's answer.

Using a real InternVL 2B/8B checkpoint (an ``-hf`` conversion, e.g. InternVL3-2B-hf /
InternVL3-8B-hf, already on local disk)::

    import torch
    from transformers import AutoModelForImageTextToText
    from vlac.cloud.models.hf_critic import TransformersCritic, load_processor, prepare_checkpoint

    model = AutoModelForImageTextToText.from_pretrained("/models/InternVL3-2B-hf")
    prepare_checkpoint(model, load_processor("/models/InternVL3-2B-hf"), "/models/vlac-2b-init")
    # ... fine-tune /models/vlac-2b-init on (critic_prompt, target_text) pairs ...
    critic = TransformersCritic("/models/vlac-2b-ft", device="cuda", dtype=torch.bfloat16)
    delta, done = critic.critique(tasks, obs_a, obs_b)

``prepare_checkpoint`` is needed once: it adds the 203 tokens to the tokenizer and grows the
embeddings / LM head. A checkpoint without them is refused at load time. An untrained
(freshly prepared) checkpoint loads and runs, but its scores are meaningless until fine-tuned.

``path`` is a local directory; nothing is fetched from a model hub (importing this module sets
``HF_HUB_OFFLINE=1`` unless it is already set). Checkpoints on S3 are to be
synced to a local directory through the project's object store once it exists: that is not
this module's job.

GPU: pass ``device="cuda"`` and ``dtype=torch.bfloat16`` when available (logits are
converted to float32 before the softmax). What the tests prove is CPU float32, on a tiny
randomly initialised model of the InternVL architecture. InternVL's processor tiles large
frames into several 448 px crops by default (``crop_to_patches``); pass
``images_kwargs={"crop_to_patches": False}`` for one tile per frame (256 tokens) -- it must
match what the checkpoint was fine-tuned with. Every pair carries the K reference frames as
images, so keep K small.

Image-only loading without torchvision: transformers loads InternVL's processor together with
a video processor, which needs torchvision. ``load_processor`` then falls back to the same
processor class without its video slot (``image_only_processor_class``), which is all the
critic uses.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
import transformers
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from vlac.cloud.critic.model import _check_frames, pair_indices
from vlac.cloud.models.vlac import (
    PROGRESS_BINS,
    CriticOutput,
    delta_to_token,
    token_to_delta,
)

log = logging.getLogger(__name__)

PROGRESS_TOKENS = [f"<vlac_p{k:03d}>" for k in range(PROGRESS_BINS)]
DONE_TOKENS = ["<vlac_done0>", "<vlac_done1>"]
CRITIC_TOKENS = PROGRESS_TOKENS + DONE_TOKENS

QUESTION = ("How much did the robot progress on the task from image 1 to image 2? "
            "Answer with a progress token, then a done token.")

__all__ = [
    "CRITIC_TOKENS",
    "DONE_TOKENS",
    "PROGRESS_TOKENS",
    "QUESTION",
    "PairScoring",
    "TransformersCritic",
    "critic_messages",
    "critic_prompt",
    "image_only_processor_class",
    "load_processor",
    "prepare_checkpoint",
    "target_text",
]


# ---------------------------------------------------------------------------------- prompt
def critic_messages(task: str, n_reference: int = 0) -> list[dict[str, Any]]:
    """The chat (one user turn) for one pair; images are placeholders, filled in order with
    the ``n_reference`` reference frames, then image 1, then image 2."""
    content: list[dict[str, Any]] = []
    if n_reference:
        content.append({"type": "text", "text": f"Reference demonstration of the task "
                                                f"({n_reference} frames, in order):"})
        content += [{"type": "image"} for _ in range(n_reference)]
    content += [{"type": "text", "text": f"Task: {task}"},
                {"type": "text", "text": "Image 1 (earlier observation):"}, {"type": "image"},
                {"type": "text", "text": "Image 2 (later observation):"}, {"type": "image"},
                {"type": "text", "text": QUESTION}]
    return [{"role": "user", "content": content}]


def user_prompt(processor, messages: list[dict[str, Any]],
                plain: Callable[[str, str], str]) -> str:
    """One user turn as prompt text ending where the answer starts: the processor's chat
    template (with the generation prompt) if it has one, else ``plain(bos, image_token)``."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)
    image = getattr(processor, "image_token", None)
    if not image:
        raise ValueError(f"{type(processor).__name__} has neither a chat template nor an "
                         "image_token: cannot place the images in the prompt")
    return plain(getattr(processor.tokenizer, "bos_token", None) or "", image)


def critic_prompt(processor, task: str, n_reference: int = 0) -> str:
    """The prompt text for one pair, ending where the progress token is to be predicted
    (``user_prompt``; the plain prompt has the processor's image token for every image)."""
    def plain(bos: str, image: str) -> str:
        ref = (f"Reference demonstration of the task ({n_reference} frames, in order): "
               f"{image * n_reference}\n" if n_reference else "")
        return (f"{bos}{ref}Task: {task}\nImage 1 (earlier observation): {image}\n"
                f"Image 2 (later observation): {image}\n{QUESTION}\nAnswer: ")

    return user_prompt(processor, critic_messages(task, n_reference), plain)


def target_text(delta: float, done: bool) -> str:
    """The assistant's answer for fine-tuning: the progress token then the done token."""
    k = int(delta_to_token(torch.tensor(float(delta))))
    return PROGRESS_TOKENS[k] + DONE_TOKENS[int(bool(done))]


# ---------------------------------------------------------------------------------- files
@functools.cache
def image_only_processor_class(cls: type) -> type:
    """``cls`` (a processor class with image_processor, tokenizer and video_processor slots)
    without its video slot: loadable and callable on images without torchvision. It keeps
    ``cls``'s name, so what it saves loads as ``cls`` where torchvision is installed."""
    if "video_processor" not in cls.get_attributes():
        return cls

    base = cls.get_attributes.__func__

    def get_attributes(sub) -> list[str]:
        return [a for a in base(sub) if a != "video_processor"]

    # The attributes (what is loaded, checked and saved) drop the video slot; __init__ stays
    # cls's own, its video_processor argument left at None.
    return type(cls.__name__, (cls,), {"get_attributes": classmethod(get_attributes),
                                       "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


def _declared_processor_class(path: Path) -> type | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        f = path / name
        if f.is_file():
            cls_name = json.loads(f.read_text()).get("processor_class")
            if cls_name:
                return getattr(transformers, cls_name, None)
    return None


def load_processor(path: str | Path):
    """``AutoProcessor.from_pretrained(path)``; without torchvision, for a processor class
    with a video slot, the same class loaded without it (images are all the critic needs)."""
    path = Path(path)
    cls = _declared_processor_class(path)
    if (cls is not None and not is_torchvision_available()
            and "video_processor" in cls.get_attributes()):
        log.info("torchvision is not installed: loading %s without its video processor",
                 cls.__name__)
        return image_only_processor_class(cls).from_pretrained(str(path))
    return AutoProcessor.from_pretrained(str(path))


def add_tokens(model, processor, tokens: list[str]) -> None:
    """Add ``tokens`` to the processor's tokenizer as special tokens, keeping the ones it has,
    and grow the model's token embeddings and LM head to cover them unless spare rows do."""
    tok = processor.tokenizer
    tok.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    ids = tok.convert_tokens_to_ids(tokens)
    if max(ids) >= model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(max(len(tok), max(ids) + 1))


def prepare_checkpoint(model, processor, out_dir: str | Path) -> Path:
    """Make a checkpoint ready to be fine-tuned to emit progress and done tokens: add the 201
    progress and 2 done tokens to the processor's tokenizer as special tokens (keeping the
    ones it has), grow the token embeddings and LM head to cover them (new rows are drawn
    around the mean of the old ones; if the embedding matrix already has spare rows past the
    tokenizer, as padded vocabularies do, those are used as they are), and save model and
    processor to ``out_dir``.
    Idempotent. ``model`` and ``processor`` are modified in place."""
    add_tokens(model, processor, CRITIC_TOKENS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


class Opened(NamedTuple):
    processor: Any
    model: Any
    ids: list[int]  # the ids of the checked tokens, in order
    accepts: set[str]  # the model's forward arguments
    positions: bool  # pass position_ids (models with their own rope positions do not need them)
    cache_arg: str  # the forward's name for the KV cache


def open_checkpoint(path: Path, tokens: list[str], what: str, fix: str, user: str,
                    device: torch.device, dtype: torch.dtype,
                    before_model: Callable[[], None] | None = None) -> Opened:
    """Processor (left padding) and model (eval, on ``device``) of a prepared checkpoint whose
    tokenizer has ``tokens`` and whose embeddings cover them; refusals name ``fix``.
    ``before_model`` runs its own checks after the tokenizer's, before the model loads."""
    processor = load_processor(path)
    tok = processor.tokenizer
    vocab = tok.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(
            f"{path}: the tokenizer lacks {len(missing)} of the {len(tokens)} {what} tokens "
            f"(e.g. {missing[0]}). Run {fix} on the base checkpoint, fine-tune it, and point "
            f"the {user} at the result")
    if before_model is not None:
        before_model()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype)
    model.to(device).eval()
    rows = model.get_input_embeddings().weight.shape[0]
    ids = [vocab[t] for t in tokens]
    if max(ids) >= rows:
        raise ValueError(
            f"{path}: the model has {rows} token embeddings but the {what} token ids reach "
            f"{max(ids)}: the embeddings were not resized. Run {fix}")
    params = inspect.signature(model.forward).parameters
    return Opened(processor, model, ids, set(params),
                  "position_ids" in params
                  and not hasattr(getattr(model, "model", None), "get_rope_index"),
                  "cache" if "cache" in params else "past_key_values")


def model_inputs(enc, opened_accepts: set[str], device: torch.device, dtype: torch.dtype
                 ) -> dict[str, torch.Tensor]:
    """Processor outputs as the model's inputs: on ``device``, floats in ``dtype``, without
    ``token_type_ids`` unless the model's forward takes them."""
    return {k: v.to(device).to(dtype) if v.is_floating_point() else v.to(device)
            for k, v in enc.items() if k != "token_type_ids" or k in opened_accepts}


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions of a left-padded batch from its attention mask (padding at 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def output_cache(out):
    """The KV cache a forward returned (``cache`` or ``past_key_values``), or None."""
    cache = getattr(out, "cache", None)
    return getattr(out, "past_key_values", None) if cache is None else cache


def cached_step(nxt: torch.Tensor, mask: torch.Tensor, cache, c: Opened) -> dict[str, Any]:
    """The inputs of one cached decoding step: the new token ids ``nxt`` (B, 1), the attention
    mask ``mask`` that already covers them, the cache, and its position when needed."""
    step = {"input_ids": nxt, "attention_mask": mask, c.cache_arg: cache, "use_cache": True}
    if c.positions:
        step["position_ids"] = position_ids(mask)[:, -1:]
    return step


# ---------------------------------------------------------------------------------- critic
class PairScoring:
    """``critique`` and ``episode_rewards`` of a critic whose ``critique_output`` scores a
    batch of pairs (the transformers and the vLLM critic)."""

    def critique_output(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                        reference: np.ndarray | None = None) -> CriticOutput:
        raise NotImplementedError

    def critique(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                 reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """B sentences, (B, H, W, 3) uint8 earlier and later observations, optional (K, H, W, 3)
        reference frames of one demonstration -> (delta in [-1, 1], done prob), each (B,)."""
        out = self.critique_output(tasks, obs_a, obs_b, reference)
        return (out.delta.numpy().astype(np.float32),
                out.done_prob.numpy().astype(np.float32))

    def episode_rewards(self, task: str, frames: np.ndarray, stride: int = 1,
                        reference: np.ndarray | None = None, from_first: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Dense rewards for an episode of T frames: r_t = delta(o_t, o_min(t+stride, T-1))
        (or delta(o_0, o_t+1) with ``from_first``) for t < T - 1, and the done probability
        at the later frame; each (T - 1,). All T - 1 pairs go to ``critique`` at once."""
        frames = _check_frames("frames", frames)
        if len(frames) < 2:
            raise ValueError("an episode needs at least 2 frames to score progress")
        ia, ib = pair_indices(len(frames), stride, from_first)
        return self.critique([task] * len(ia), frames[ia], frames[ib], reference)


class TransformersCritic(PairScoring):
    """The ``Critic`` protocol on a prepared and fine-tuned image-text-to-text checkpoint."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 8, *,
                 images_kwargs: dict[str, Any] | None = None, use_cache: bool = True) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no checkpoint at {path}: expected a local directory with a transformers "
                "image-text-to-text model and its processor (made by prepare_checkpoint)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = path
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self.images_kwargs = dict(images_kwargs) if images_kwargs else None
        self.use_cache = use_cache

        c = open_checkpoint(path, CRITIC_TOKENS, "progress/done",
                            "vlac.cloud.models.hf_critic.prepare_checkpoint(model, processor, "
                            "out_dir)",
                            "critic", self.device, dtype)
        self.processor, self.model, self._opened = c.processor, c.model, c
        self._accepts, self._positions = c.accepts, c.positions
        self.progress_ids = torch.tensor(c.ids[:PROGRESS_BINS], device=self.device)
        self.done_ids = torch.tensor(c.ids[PROGRESS_BINS:], device=self.device)
        self.bin_values = token_to_delta(torch.arange(PROGRESS_BINS)).to(self.device)

    # ------------------------------------------------------------------ inputs
    def _validate(self, tasks, obs_a, obs_b, reference):
        a, b = _check_frames("obs_a", obs_a), _check_frames("obs_b", obs_b)
        if a.shape != b.shape or len(tasks) != len(a):
            raise ValueError(f"need one sentence per pair and equal shapes: {len(tasks)} "
                             f"sentences, obs_a {a.shape}, obs_b {b.shape}")
        ref = _check_frames("reference", reference) if reference is not None else None
        return list(tasks), a, b, ref

    def build_inputs(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                     reference: np.ndarray | None = None):
        """Processor outputs (left-padded, on the CPU) for a batch of pairs: one prompt per
        pair, with the reference frames (if any), image 1 and image 2 as its images."""
        tasks, a, b, ref = self._validate(tasks, obs_a, obs_b, reference)
        ref_images = [Image.fromarray(f) for f in ref] if ref is not None else []
        texts = [critic_prompt(self.processor, t, len(ref_images)) for t in tasks]
        images = [[*ref_images, Image.fromarray(fa), Image.fromarray(fb)]
                  for fa, fb in zip(a, b, strict=True)]
        kw: dict[str, Any] = {}
        if self.images_kwargs:
            kw["images_kwargs"] = self.images_kwargs
        return self.processor(text=texts, images=images, return_tensors="pt", padding=True,
                              padding_side="left", add_special_tokens=False, **kw)

    # ------------------------------------------------------------------ training
    def pair_logits(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                    progress_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced, with gradients, in one pass over prompt + the given progress token:
        the progress logits (B, 201) at the answer's first position and the done logits
        (B, 2) after ``progress_tokens`` (B,), float32 (what ``vlac critic train --backend
        transformers`` fits)."""
        inputs = model_inputs(self.build_inputs(tasks, obs_a, obs_b), self._accepts,
                              self.device, self.dtype)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        nxt = self.progress_ids[progress_tokens.long().to(self.device)][:, None]
        step = {k: (torch.cat([v, v[:, -1:]], 1)
                    if v.ndim == 2 and v.shape == ids.shape and k != "input_ids" else v)
                for k, v in inputs.items()}
        mask2 = torch.cat([mask, torch.ones_like(nxt)], 1)
        step.update(input_ids=torch.cat([ids, nxt], 1), attention_mask=mask2, use_cache=False)
        if self._positions:
            step["position_ids"] = position_ids(mask2)
        if "logits_to_keep" in self._accepts:
            step["logits_to_keep"] = 2
        logits = self.model(**step).logits[:, -2:].float()
        return logits[:, 0][:, self.progress_ids], logits[:, 1][:, self.done_ids]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _score(self, enc) -> CriticOutput:
        inputs = model_inputs(enc, self._accepts, self.device, self.dtype)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        extra: dict[str, Any] = {}
        if "logits_to_keep" in self._accepts:
            extra["logits_to_keep"] = 1
        if self._positions:
            extra["position_ids"] = position_ids(mask)

        out = self.model(**inputs, **extra, use_cache=self.use_cache)
        p_logits = out.logits[:, -1].float()[:, self.progress_ids]
        probs = p_logits.softmax(-1)
        token = probs.argmax(-1)
        nxt = self.progress_ids[token][:, None]

        mask2 = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        cache = output_cache(out)
        if self.use_cache and cache is not None:  # only the new token; the prompt is cached
            step = cached_step(nxt, mask2, cache, self._opened)
        else:  # the whole prompt again, with the progress token appended
            step = {k: (torch.cat([v, v[:, -1:]], 1)
                        if v.ndim == 2 and v.shape == ids.shape and k != "input_ids" else v)
                    for k, v in inputs.items()}
            step.update(input_ids=torch.cat([ids, nxt], 1), attention_mask=mask2, use_cache=False)
            if self._positions:
                step["position_ids"] = position_ids(mask2)
        if "logits_to_keep" in self._accepts:
            step["logits_to_keep"] = 1
        d_logits = self.model(**step).logits[:, -1].float()[:, self.done_ids]
        return CriticOutput(delta=probs @ self.bin_values, done_prob=d_logits.softmax(-1)[:, 1],
                            progress_token=token, progress_logits=p_logits,
                            done_logits=d_logits)

    def critique_output(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                        reference: np.ndarray | None = None) -> CriticOutput:
        """Like ``critique``, with the argmax progress tokens and both logits (CPU tensors)."""
        tasks, a, b, ref = self._validate(tasks, obs_a, obs_b, reference)
        outs = [self._score(self.build_inputs(tasks[s:s + self.batch_size],
                                              a[s:s + self.batch_size],
                                              b[s:s + self.batch_size], ref))
                for s in range(0, len(tasks), self.batch_size)]
        if not outs:
            empty = torch.zeros(0)
            return CriticOutput(empty, empty, empty.long(), torch.zeros(0, PROGRESS_BINS),
                                torch.zeros(0, 2))
        return CriticOutput(*(torch.cat([getattr(o, f).cpu() for o in outs])
                              for f in ("delta", "done_prob", "progress_token",
                                        "progress_logits", "done_logits")))

"""An actor backed by a transformers image-text-to-text checkpoint (InternVL in production).

``TransformersActor`` has the interface of ``vlac.cloud.actor.model.TorchActor`` where callers touch
it (``tokenizer``, ``camera``, ``version``, ``rng``, ``act``) plus the teacher-forced
``action_logprobs`` that PPO needs (as ``SmallVLAC.action_logprobs``), but the policy is a
vision-language model fine-tuned to answer with one action token per action dimension: the
critic's model class switched by its prompt to act (the VLAC paper's unified action-critic).

- An action token ``<vlac_aKKK>`` (K = 0..255) is the bin K of one action dimension, decoded to
  a continuous value by ``vlac.shared.tokenizer.ActionTokenizer(low, high, 256)``.
- ``act`` decodes A = len(low) tokens autoregressively. At each step the next-token logits are
  restricted to the 256 action tokens and divided by the temperature; the token is
  argmax(logits / T + gumbel) (a sample of softmax(logits / T); zero noise when ``greedy``),
  its log-probability is taken under log_softmax(logits / T), and it is fed back (KV cache).
- The value for PPO is a ``torch.nn.Linear(hidden_size, 1)`` head (``vlac_value_head.pt`` in
  the checkpoint directory) on the final hidden state of the last prompt position.

The prompt is one user turn (the processor's chat template when it has one, else a plain
prompt with the processor's image token): the camera image, the task sentence, the
proprioception as text (3 decimals) and the question ``ACTOR_QUESTION``; see
``actor_messages`` / ``actor_prompt``. Fine-tuning data must use the same prompt, with
``actor_target_text(tokens)`` as the assistant's answer.

Using a real InternVL 2B checkpoint (an ``-hf`` conversion, e.g. InternVL3-2B-hf, already on
local disk)::

    import torch
    from transformers import AutoModelForImageTextToText
    from vlac.cloud.models.hf_actor import TransformersActor, prepare_actor_checkpoint
    from vlac.cloud.models.hf_critic import load_processor

    model = AutoModelForImageTextToText.from_pretrained("/models/InternVL3-2B-hf")
    prepare_actor_checkpoint(model, load_processor("/models/InternVL3-2B-hf"),
                             "/models/vlac-actor-2b-init")
    # ... fine-tune on (actor_prompt, actor_target_text) pairs, keep vlac_value_head.pt ...
    actor = TransformersActor("/models/vlac-actor-2b-ft", low, high, device="cuda",
                              dtype=torch.bfloat16, images_kwargs={"crop_to_patches": False})
    action, tokens, logp, value = actor.act(image, proprio, "push the red button")

``prepare_actor_checkpoint`` is needed once: it adds the 256 action tokens (keeping any others,
e.g. the critic's from ``vlac.cloud.models.hf_critic.prepare_checkpoint``, so one checkpoint
can carry both), grows the embeddings / LM head and writes a zero-initialised value head. A
checkpoint without them is refused at load time. A freshly prepared checkpoint loads and runs,
but acts at random until fine-tuned.

``path`` is a local directory; nothing is fetched from a model hub (importing
``vlac.cloud.models.hf_critic`` sets ``HF_HUB_OFFLINE=1`` unless it is already set).

GPU: pass ``device="cuda"`` and ``dtype=torch.bfloat16`` when available; restricted logits are
converted to float32 before the softmax and the value head runs in float32. What the tests
prove is CPU float32, on a tiny randomly initialised model of the InternVL architecture
(greedy decoding, Gumbel sampling, agreement between cached decoding and the one-pass
teacher-forced log-probabilities, gradients, left-padded batches). InternVL's processor tiles
large frames into several 448 px crops by default; ``images_kwargs={"crop_to_patches": False}``
gives one tile per frame (256 tokens) -- it must match what the checkpoint was fine-tuned with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlac.cloud.critic.model import _check_frames
from vlac.cloud.models.hf_critic import (
    add_tokens,
    cached_step,
    model_inputs,
    open_checkpoint,
    output_cache,
    position_ids,
    user_prompt,
)
from vlac.cloud.models.vlac import token_logprobs
from vlac.shared.hf_prompt import PROPRIO_SLOT, TASK_SLOT, proprio_text
from vlac.shared.tokenizer import ActionTokenizer

ACTION_BINS = 256
ACTION_TOKENS = [f"<vlac_a{k:03d}>" for k in range(ACTION_BINS)]
VALUE_HEAD_FILE = "vlac_value_head.pt"

ACTOR_QUESTION = ("What should the robot do next to accomplish the task? "
                  "Answer with one action token per action dimension.")

__all__ = [
    "ACTION_BINS",
    "ACTION_TOKENS",
    "ACTOR_QUESTION",
    "VALUE_HEAD_FILE",
    "TransformersActor",
    "actor_messages",
    "actor_prompt",
    "actor_prompt_template",
    "actor_target_text",
    "prepare_actor_checkpoint",
]

_PREPARE = "vlac.cloud.models.hf_actor.prepare_actor_checkpoint(model, processor, out_dir)"


# ---------------------------------------------------------------------------------- prompt
def _messages(task: str, proprio: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [
        {"type": "text", "text": "Camera:"}, {"type": "image"},
        {"type": "text", "text": f"Task: {task}"},
        {"type": "text", "text": f"Robot state (proprioception): {proprio}"},
        {"type": "text", "text": ACTOR_QUESTION}]}]


def _prompt(processor, task: str, proprio: str) -> str:
    def plain(bos: str, image: str) -> str:
        return (f"{bos}Camera: {image}\nTask: {task}\n"
                f"Robot state (proprioception): {proprio}\n"
                f"{ACTOR_QUESTION}\nAnswer: ")

    return user_prompt(processor, _messages(task, proprio), plain)


def actor_messages(task: str, proprio: Sequence[float] | np.ndarray) -> list[dict[str, Any]]:
    """The chat (one user turn) for one observation; the image placeholder is the camera."""
    return _messages(task, proprio_text(proprio))


def actor_prompt(processor, task: str, proprio: Sequence[float] | np.ndarray) -> str:
    """The prompt text for one observation, ending where the first action token is to be
    predicted (``vlac.cloud.models.hf_critic.user_prompt``)."""
    return _prompt(processor, task, proprio_text(proprio))


def actor_prompt_template(processor) -> str:
    """The prompt with ``shared.hf_prompt``'s slots where the task and the proprioception go
    (what a robot fills in to prompt an exported actor)."""
    return _prompt(processor, TASK_SLOT, PROPRIO_SLOT)


def actor_target_text(tokens: Sequence[int] | np.ndarray) -> str:
    """The assistant's answer for fine-tuning: the action tokens, one per dimension."""
    t = np.asarray(tokens).reshape(-1)
    if t.size and (t.min() < 0 or t.max() >= ACTION_BINS):
        raise ValueError(f"action tokens must lie in [0, {ACTION_BINS}), got {t.tolist()}")
    return "".join(ACTION_TOKENS[int(k)] for k in t)


# ---------------------------------------------------------------------------------- files
def _hidden_size(model) -> int:
    return int(model.config.get_text_config().hidden_size)


def prepare_actor_checkpoint(model, processor, out_dir: str | Path) -> Path:
    """Make a checkpoint ready to be fine-tuned to emit action tokens: add the 256 action
    tokens to the processor's tokenizer as special tokens (keeping the ones it has, e.g. the
    critic's progress/done tokens), grow the token embeddings and LM head to cover them (only
    if the embedding matrix has no spare rows for them), save model and processor to
    ``out_dir``, and write a zero-initialised value head ``vlac_value_head.pt`` there unless
    one already exists. Idempotent. ``model`` and ``processor`` are modified in place."""
    add_tokens(model, processor, ACTION_TOKENS)
    return _save(model, processor, out_dir, None)


def _save(model, processor, out_dir: str | Path, head: torch.nn.Linear | None) -> Path:
    """Model and processor to ``out_dir``, with ``head`` as the value head; without one, a
    zero-initialised head unless ``out_dir`` already has a value head."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if head is None and not (out / VALUE_HEAD_FILE).is_file():
        head = torch.nn.Linear(_hidden_size(model), 1)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    if head is not None:
        torch.save({k: v.detach().float().cpu() for k, v in head.state_dict().items()},
                   out / VALUE_HEAD_FILE)
    return out


# ---------------------------------------------------------------------------------- actor
def _as_tokens(tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
    return tokens if torch.is_tensor(tokens) else torch.as_tensor(np.asarray(tokens))


class TransformersActor:
    """``TorchActor``'s interface on a prepared (and fine-tuned) image-text-to-text
    checkpoint. ``model`` and ``value_head`` are the trainable modules (``parameters()``)."""

    def __init__(self, path: str | Path, low=(-1.0,) * 4, high=(1.0,) * 4, *,
                 camera: str = "corner", version: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32,
                 images_kwargs: dict[str, Any] | None = None, proprio_dim: int = 4) -> None:
        if len(low) != len(high):
            raise ValueError(f"low has {len(low)} values and high {len(high)}: give one bound "
                             "per action dimension in each")
        self.tokenizer = ActionTokenizer(low, high, ACTION_BINS)
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no checkpoint at {path}: expected a local directory with a transformers "
                f"image-text-to-text model and its processor (made by {_PREPARE})")
        if proprio_dim < 0:
            raise ValueError(f"proprio_dim must be >= 0, got {proprio_dim}")
        self.path = path
        self.camera = camera
        self.version = version
        self.proprio_dim = int(proprio_dim)
        self.device = torch.device(device)
        self.dtype = dtype
        self.images_kwargs = dict(images_kwargs) if images_kwargs else None
        self.rng = np.random.default_rng(0)  # Gumbel noise; replace to continue a stream

        head_file = path / VALUE_HEAD_FILE

        def value_head_exists() -> None:
            if not head_file.is_file():
                raise FileNotFoundError(f"{path}: no value head ({VALUE_HEAD_FILE}). Run "
                                        f"{_PREPARE} on the base checkpoint")

        c = open_checkpoint(path, ACTION_TOKENS, "action", _PREPARE, "actor", self.device,
                            dtype, value_head_exists)
        self.processor, self.model, self._opened = c.processor, c.model, c
        self._accepts, self._positions = c.accepts, c.positions
        self.action_ids = torch.tensor(c.ids, device=self.device)

        hidden = _hidden_size(self.model)
        self.value_head = torch.nn.Linear(hidden, 1)
        state = torch.load(head_file, map_location="cpu", weights_only=True)
        if tuple(state.get("weight", torch.empty(0)).shape) != (1, hidden):
            raise ValueError(f"{head_file}: not a value head for hidden size {hidden}. Delete it "
                             f"and run {_PREPARE} to write a fresh one")
        self.value_head.load_state_dict(state)
        self.value_head.to(self.device)

    @property
    def action_dim(self) -> int:
        return self.tokenizer.dim

    def save(self, out_dir: str | Path, model=None) -> Path:
        """Model, processor and value head to ``out_dir``, loadable as a ``TransformersActor``
        (the action box, camera and version are constructor arguments, not saved). ``model``:
        other weights of the same architecture to save instead (LoRA adapters merged)."""
        return _save(self.model if model is None else model, self.processor, out_dir,
                     self.value_head)

    def parameters(self):
        """The trainable parameters: the model's, then the value head's."""
        yield from self.model.parameters()
        yield from self.value_head.parameters()

    # ------------------------------------------------------------------ inputs
    def _check_proprio(self, proprio, batch: int | None = None) -> np.ndarray:
        p = np.asarray(proprio, np.float64)
        shape = (self.proprio_dim,) if batch is None else (batch, self.proprio_dim)
        if p.shape != shape:
            raise ValueError(f"proprio must have shape {shape} (proprio_dim="
                             f"{self.proprio_dim}), got {p.shape}")
        if not np.isfinite(p).all():
            raise ValueError("proprio contains NaN or infinity")
        return p

    @staticmethod
    def _check_temperature(temperature: float) -> float:
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        return float(temperature)

    def build_inputs(self, images: np.ndarray, proprio: np.ndarray, tasks: list[str]):
        """Processor outputs (left-padded, on the CPU) for a batch of observations."""
        images = _check_frames("images", images)
        proprio = self._check_proprio(proprio, len(images))
        if len(tasks) != len(images):
            raise ValueError(f"need one task sentence per image: {len(tasks)} sentences, "
                             f"{len(images)} images")
        texts = [actor_prompt(self.processor, t, p) for t, p in zip(tasks, proprio, strict=True)]
        kw: dict[str, Any] = {}
        if self.images_kwargs:
            kw["images_kwargs"] = self.images_kwargs
        return self.processor(text=texts, images=[[Image.fromarray(f)] for f in images],
                              return_tensors="pt", padding=True, padding_side="left",
                              add_special_tokens=False, **kw)

    def _model_inputs(self, enc) -> dict[str, torch.Tensor]:
        return model_inputs(enc, self._accepts, self.device, self.dtype)

    def _forward(self, inputs: dict[str, Any], keep: int, **kw):
        """One model pass over ``inputs`` (with position ids from the attention mask), logits
        kept for the last ``keep`` positions, hidden states returned unless ``kw`` says not."""
        extra: dict[str, Any] = {"output_hidden_states": True, **kw}
        if "logits_to_keep" in self._accepts:
            extra["logits_to_keep"] = keep
        if self._positions and "position_ids" not in inputs:
            pos = position_ids(inputs["attention_mask"])
            extra["position_ids"] = pos[:, -inputs["input_ids"].shape[1]:]
        return self.model(**inputs, **extra)

    def _value(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.value_head(hidden.float()).squeeze(-1)

    def _extended(self, inputs: dict[str, torch.Tensor], new: torch.Tensor):
        """``inputs`` with the token ids ``new`` (B, n) appended (attention mask and any other
        per-token input grown alongside)."""
        ids = inputs["input_ids"]
        out = {k: (torch.cat([v, v[:, -1:].expand(-1, new.shape[1])], 1)
                   if v.ndim == 2 and v.shape == ids.shape and k != "input_ids" else v)
               for k, v in inputs.items()}
        out["input_ids"] = torch.cat([ids, new], 1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(new)], 1)
        return out

    # ------------------------------------------------------------------ acting
    @torch.no_grad()
    def act(self, image: np.ndarray, proprio: np.ndarray, task: str,
            temperature: float = 1.0, greedy: bool = False
            ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """One observation ((H, W, 3) uint8 camera image, (proprio_dim,) proprio, task sentence)
        -> (continuous action, tokens (A,) int32, summed log-prob of the tokens under
        softmax(logits / temperature), value)."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be a uint8 frame (H, W, 3), got {image.shape} "
                             f"{image.dtype}")
        t = self._check_temperature(temperature)
        proprio = self._check_proprio(proprio)
        inputs = self._model_inputs(self.build_inputs(image[None], proprio[None], [task]))
        a = self.action_dim
        gumbel = (np.zeros((a, ACTION_BINS)) if greedy
                  else self.rng.gumbel(size=(a, ACTION_BINS)))
        gumbel = torch.from_numpy(gumbel).float().to(self.device)
        mask = inputs["attention_mask"]

        out = self._forward(inputs, 1, use_cache=True)
        value = float(self._value(out.hidden_states[-1][:, -1])[0])
        tokens, logp = [], 0.0
        for k in range(a):
            logits = out.logits[0, -1].float()[self.action_ids] / t
            tok = int(torch.argmax(logits + gumbel[k]))
            tokens.append(tok)
            logp += float(torch.log_softmax(logits, -1)[tok])
            if k == a - 1:
                break
            nxt = self.action_ids[tok].view(1, 1)
            cache = output_cache(out)
            if cache is not None:  # only the new token; the rest is cached
                mask = torch.cat([mask, torch.ones_like(nxt)], 1)
                out = self._forward(cached_step(nxt, mask, cache, self._opened), 1,
                                    output_hidden_states=False)
            else:  # the whole sequence again, with the chosen token appended
                inputs = self._extended(inputs, nxt)
                out = self._forward(inputs, 1, use_cache=False, output_hidden_states=False)
        tokens_np = np.asarray(tokens, np.int32)
        return self.tokenizer.decode(tokens_np), tokens_np, logp, value

    # ------------------------------------------------------------------ learning
    def action_logits(self, images: np.ndarray, proprio: np.ndarray, tasks: list[str],
                      tokens: np.ndarray | torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced, in one pass over prompt + tokens[:, :-1] (left-padded batch):
        the logits (B, A, 256) of every action dimension restricted to the action tokens
        (float32) and the value (B,). Gradients flow (no torch.no_grad)."""
        tok = _as_tokens(tokens)
        a = self.action_dim
        if tok.ndim != 2 or tok.shape != (len(tasks), a):
            raise ValueError(f"tokens must be (B, {a}) = (len(tasks), action_dim), "
                             f"got {tuple(tok.shape)}")
        if tok.numel() and (tok.min() < 0 or tok.max() >= ACTION_BINS):
            raise ValueError(f"action tokens must lie in [0, {ACTION_BINS})")
        inputs = self._model_inputs(self.build_inputs(images, proprio, tasks))
        prev = self.action_ids[tok.long().to(self.device)][:, :-1]
        out = self._forward(self._extended(inputs, prev), a, use_cache=False)
        logits = out.logits[:, -a:].float()[..., self.action_ids]
        return logits, self._value(out.hidden_states[-1][:, -a])

    def action_logprobs(self, images: np.ndarray, proprio: np.ndarray, tasks: list[str],
                        tokens: np.ndarray | torch.Tensor, temperature: float = 1.0,
                        sigma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, H, W, 3) uint8 images, (B, proprio_dim) proprio, B task sentences, (B, A) action
        tokens -> log-probability of the tokens under softmax(logits / temperature), summed
        over dimensions (B,), mean per-token entropy (B,) and value (B,): what PPO recomputes
        with the learner's weights (at the temperature the robots sampled with). With
        ``sigma``, each token's term is that of a bump around it (``vlac.token_logprobs``)."""
        t = self._check_temperature(temperature)
        logits, value = self.action_logits(images, proprio, tasks, tokens)
        logp_all = torch.log_softmax(logits / t, -1)
        logp = token_logprobs(logp_all, _as_tokens(tokens), sigma)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean(-1)
        return logp.sum(-1), entropy, value

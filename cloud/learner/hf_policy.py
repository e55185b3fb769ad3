"""The transformers actor as the learner trains it (``--actor.type hf``; see ``actors``).

``HFPolicy`` makes ``TransformersActor``'s model and value head one ``torch.nn.Module`` for
the DeepSpeed engine and gives it the small actor's call signature, so that PPO's loss and
behaviour cloning run on it unchanged: ``text`` is the batch's task sentences, ``feat`` its
uint8 camera frames (the model encodes its own images), and the teacher-forced log-probs are
``TransformersActor.action_logprobs``'s.

With ``--actor.lora-rank R`` peft injects LoRA adapters into ``--actor.lora-targets`` in
place; the base weights are frozen, the adapters and the value head train, and the saved
actor has the adapters merged into a copy of the model (a plain checkpoint again). ZeRO-3
partitions the weights across processes; saving gathers them on every process first
(``gathered``), and rank 0 writes them. LoRA with ZeRO-3 is refused (the merge needs the whole
model on one process; with adapters the optimizer state is small and ZeRO-2 suffices).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlac.cloud.learner.actors import ActorConfig, LearnerActor
from vlac.shared.config import ConfigError


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


class HFPolicy(torch.nn.Module):
    """The trainable modules of a ``TransformersActor`` (``model``, ``value_head``) with the
    small actor's ``action_logprobs`` / ``actor_forward`` signatures."""

    def __init__(self, actor) -> None:
        super().__init__()
        self.model, self.value_head = actor.model, actor.value_head
        object.__setattr__(self, "actor", actor)  # a plain attribute, not a second submodule

    def _inputs(self, text, feat, proprio) -> tuple[np.ndarray, np.ndarray, list[str]]:
        frames = _numpy(feat)
        if frames.dtype != np.uint8 or frames.ndim != 4:
            raise ValueError(f"a transformers actor takes camera frames (B, H, W, 3) uint8 as "
                             f"`feat`, got {frames.shape} {frames.dtype}: is --actor.type "
                             "right for the --init checkpoint?")
        return frames, _numpy(proprio).astype(np.float64), [str(t) for t in text]

    def action_logprobs(self, text, feat, proprio, tokens, temperature: float = 1.0,
                        sigma: float = 0.0):
        """(summed log-prob of ``tokens``, mean per-token entropy, value), each (B,)."""
        return self.actor.action_logprobs(*self._inputs(text, feat, proprio), tokens,
                                          temperature, sigma)

    def actor_forward(self, text, feat, proprio, tokens):
        """(logits (B, A, 256) restricted to the action tokens, value (B,))."""
        return self.actor.action_logits(*self._inputs(text, feat, proprio), tokens)


def _partitioned(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters ZeRO-3 has partitioned (they carry a ``ds_id``)."""
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


class HFLearnerActor(LearnerActor):
    """A ``TransformersActor`` loaded from ``--init`` (a checkpoint folder) for training."""

    checkpoint_name = "actor"  # a folder

    def __init__(self, init: Path, cfg: ActorConfig, camera: str = "corner") -> None:
        from vlac.cloud.models.hf_actor import TransformersActor

        if not Path(init).is_dir():
            raise ConfigError(f"config field `init`: {init} is not a checkpoint folder; "
                              "--actor.type hf takes a folder made by "
                              "hf_actor.prepare_actor_checkpoint (and fine-tuned)")
        self.cfg = cfg
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.actor = TransformersActor(
            init, cfg.low, cfg.high, camera=camera, device=device,
            dtype=getattr(torch, cfg.dtype), proprio_dim=cfg.proprio_dim,
            images_kwargs=None if cfg.image_tiles else {"crop_to_patches": False})
        self.peft = None
        if cfg.lora_rank:
            self.peft = self._with_lora(cfg)
        self.actor.model.eval()  # dropout off: anchors and ratios from the same function
        self.module = HFPolicy(self.actor)

    def _with_lora(self, cfg: ActorConfig):
        from vlac.cloud.models.lora import with_lora

        # injected into actor.model in place, with the action tokens' rows
        peft_model = with_lora(self.actor.model, cfg.lora_rank, cfg.lora_alpha,
                               cfg.lora_targets, self.actor.action_ids.tolist(),
                               field="actor.lora_targets")
        self.actor.value_head.requires_grad_(True)  # the value head trains too
        return peft_model

    camera = property(lambda self: self.actor.camera,
                      lambda self, v: setattr(self.actor, "camera", v))
    version = property(lambda self: self.actor.version,
                       lambda self, v: setattr(self.actor, "version", v))

    def text(self, task: str) -> np.ndarray:
        return np.array(task)

    def observe(self, frames: np.ndarray) -> np.ndarray:
        return np.asarray(frames, np.uint8)

    @contextmanager
    def gathered(self):
        parts = _partitioned(self.module)
        if not parts:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(parts, modifier_rank=None):
            yield

    def _plain_model(self, *, own: bool = False):
        """The model without adapters: merged into a copy, or the model itself (a copy of it
        with ``own``, for a caller that keeps it while training goes on)."""
        if self.peft is None:
            return copy.deepcopy(self.actor.model) if own else self.actor.model
        from vlac.cloud.models.lora import merged

        return merged(self.peft)  # already a copy

    def save(self, path: Path) -> None:
        self.actor.save(path, model=self._plain_model())

    def snapshot(self, version: int) -> Any:
        """A ``TransformersActor`` with a copy of the current weights (adapters merged).
        Under ZeRO-3, only inside ``gathered`` (every process)."""
        if any(p.numel() == 0 for p in _partitioned(self.module)):
            raise RuntimeError("the weights are partitioned (ZeRO-3): snapshot inside "
                               "`with actor.gathered():` on every process")
        copied = copy.copy(self.actor)
        copied.model = self._plain_model(own=True)
        copied.value_head = copy.deepcopy(self.actor.value_head)
        copied.version = version
        return copied

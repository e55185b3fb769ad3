"""The actor the learner trains, by type (``--actor.type``): what it sees and how it is saved.

Two kinds sit behind one small interface (``LearnerActor``), so that the algorithms, the
behaviour-cloning pools and the checkpoints do not care which one trains:

- ``small`` (default): ``vlac.cloud.actor.model.TorchActor``, the small VLAC on frozen image
  and text encoders. An episode's observations are its image *features* (computed once per
  frame) and the sentence's embedding; what trains is ``SmallVLAC``.
- ``hf``: ``vlac.cloud.models.hf_actor.TransformersActor``, a vision-language model (InternVL
  in production) that encodes its own images. An episode's observations are its raw camera
  frames (uint8) and the task sentence as text; what trains is ``HFPolicy``, the model and
  its value head as one ``torch.nn.Module``, optionally through LoRA adapters (peft). The
  saved actor is a checkpoint folder (``TransformersActor.save``; adapters merged), loadable
  as ``--init`` again.

Both modules answer ``action_logprobs(text, feat, proprio, tokens, temperature)`` and
``actor_forward(text, feat, proprio, tokens)``, which is all PPO and behaviour cloning call;
``model_input`` turns a batch column into what they take.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from vlac.cloud.models.lora import LORA_TARGETS
from vlac.shared.config import check, opt

ActorType = Literal["small", "hf"]


@dataclass
class ActorConfig:
    type: ActorType = opt("small", "small: --init is the small actor's .pt (`vlac actor "
                          "pretrain`); hf: --init is a transformers checkpoint folder prepared "
                          "by hf_actor.prepare_actor_checkpoint (InternVL in production).")
    low: list[float] = opt([-1.0] * 4, "hf: the action box's lower bounds, one per action "
                           "dimension (the small actor's box is in its checkpoint).")
    high: list[float] = opt([1.0] * 4, "hf: the action box's upper bounds.")
    proprio_dim: int = opt(4, "hf: values of proprioception the prompt shows.")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "hf: the model's weights (bfloat16 "
                                                "on GPUs).")
    image_tiles: bool = opt(False, "hf: let InternVL's processor tile a frame into several "
                            "crops (must match the fine-tuning; off: one tile per frame).")
    lora_rank: int = opt(0, "hf: train LoRA adapters of this rank (peft) on "
                         "--actor.lora-targets and the value head, the rest frozen (0: "
                         "train every weight).")
    lora_alpha: float = opt(16.0, "hf: LoRA's scale numerator (alpha / rank).")
    lora_targets: list[str] = opt(list(LORA_TARGETS), "hf: the module names LoRA adapts.")

    def __post_init__(self) -> None:
        check(self.type in ("small", "hf"), "actor.type", "use small or hf")
        check(len(self.low) == len(self.high) and len(self.low) >= 1, "actor.low",
              "give one lower and one upper bound per action dimension")
        check(all(h > lo for lo, h in zip(self.low, self.high, strict=True)), "actor.high",
              "every upper bound must exceed its lower bound")
        check(self.proprio_dim >= 0, "actor.proprio_dim", "must be >= 0")
        check(self.lora_rank >= 0, "actor.lora_rank", "must be >= 0 (0: no LoRA)")
        check(self.lora_rank == 0 or self.type == "hf", "actor.lora_rank",
              "LoRA adapts the transformers actor only (--actor.type hf)")
        check(self.lora_alpha > 0, "actor.lora_alpha", "must be > 0")
        check(bool(self.lora_targets), "actor.lora_targets", "name at least one module")


def model_input(name: str, column: np.ndarray) -> torch.Tensor | list[str]:
    """A batch column as the actor modules take it: tokens and version lags int64, frames
    stay uint8 (a transformers actor's processor wants them so), sentences stay text, the
    rest float32."""
    if column.dtype.kind in "US":
        return [str(t) for t in column]
    if name in ("tokens", "b_version_lag"):
        return torch.from_numpy(column.astype(np.int64))
    if column.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(column))
    return torch.from_numpy(column.astype(np.float32))


class LearnerActor:
    """What the learner needs of an actor besides the module it trains (``module``)."""

    module: torch.nn.Module
    camera: str
    version: int
    checkpoint_name: str  # the saved actor's name in a checkpoint and in --out

    def text(self, task: str) -> np.ndarray:
        """The sentence as an episode carries it (broadcast to every step)."""
        raise NotImplementedError

    def observe(self, frames: np.ndarray) -> np.ndarray:
        """An episode's camera frames as the module takes them, per step."""
        raise NotImplementedError

    def observe_demo(self, info: dict, frames: Callable[[], np.ndarray]) -> np.ndarray:
        """A replayed demonstration's observations (``frames()`` loads its frames)."""
        return self.observe(frames())

    def warm(self) -> None:
        """Load what is loaded lazily (before a progress bar starts)."""

    def gathered(self):
        """A context every process enters around rank 0's ``save`` (ZeRO-3 gathers the
        partitioned weights in it)."""
        return nullcontext()

    def save(self, path: Path) -> None:
        raise NotImplementedError

    def snapshot(self, version: int) -> Any:
        """A copy of the current weights as an actor, safe to keep while training goes on."""
        raise NotImplementedError


class SmallLearnerActor(LearnerActor):
    checkpoint_name = "actor.pt"

    def __init__(self, init: Path, features: Path, image_encoder=None, text_encoder=None
                 ) -> None:
        from vlac.cloud.actor.model import TorchActor

        self.actor = TorchActor.load(init, image_encoder=image_encoder,
                                     text_encoder=text_encoder)
        self.module, self.features, self._cache = self.actor.model, features, None

    camera = property(lambda self: self.actor.camera,
                      lambda self, v: setattr(self.actor, "camera", v))
    version = property(lambda self: self.actor.version,
                       lambda self, v: setattr(self.actor, "version", v))

    def text(self, task: str) -> np.ndarray:
        return self.actor.text_encoder.encode([task])[0]

    def observe(self, frames: np.ndarray) -> np.ndarray:
        return self.actor.image_encoder.encode(frames)

    def observe_demo(self, info: dict, frames: Callable[[], np.ndarray]) -> np.ndarray:
        from vlac.cloud.models.encoders import FeatureCache

        if self._cache is None:  # shared with `vlac actor pretrain`
            self._cache = FeatureCache(self.features, self.actor.image_encoder)
        return self._cache.get(info["robot_id"], info["episode_id"], self.camera, frames)

    def warm(self) -> None:
        _ = self.actor.image_encoder, self.actor.text_encoder

    def save(self, path: Path) -> None:
        self.actor.save(path)

    def snapshot(self, version: int):
        from vlac.cloud.actor.model import TorchActor
        from vlac.cloud.models.vlac import SmallVLAC

        model = SmallVLAC(self.module.cfg)
        model.load_state_dict(self.module.state_dict())
        tok, a = self.actor.tokenizer, self.actor
        return TorchActor(model, tok.low, tok.high, camera=self.camera, version=version,
                          image_encoder=a.image_encoder, text_encoder=a.text_encoder)


def load_learner_actor(cfg, image_encoder=None, text_encoder=None) -> LearnerActor:
    """The ``--init`` actor of ``cfg`` (a ``LearnerConfig``) as its ``--actor.type`` says."""
    if cfg.actor.type == "hf":
        from vlac.cloud.learner.hf_policy import HFLearnerActor  # transformers: only here

        return HFLearnerActor(cfg.init, cfg.actor, camera=cfg.camera or "corner")
    return SmallLearnerActor(cfg.init, cfg.features, image_encoder, text_encoder)


__all__ = ["ActorConfig", "LearnerActor", "SmallLearnerActor", "load_learner_actor",
           "model_input"]

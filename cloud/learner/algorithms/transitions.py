"""Replayed transitions (s, a, r, s', done) for the off-policy algorithm, in two buffers as
RLPD and HIL-SERL keep them: ``human`` (demonstrations and operator takeovers) and ``online``
(what the fleet's policies did), each batch drawn half from each while both hold data.

An episode's used steps t < len(rewards) become transitions; s' is step t+1, except at the
last used step of a terminal episode (success, or the critic's done), where done = 1 and s' is
never read. A non-terminal episode's last recorded step is only ever an s' (its reward is
unknown: the observation after its action was not recorded). Image features are kept pooled
to the policy's grid (``qfunction.pool_features``), about 10 KB per observation at the
defaults instead of 41, in float16. When a buffer is full its oldest half is dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from vlac.cloud.learner.algorithms.qfunction import pool_features

if TYPE_CHECKING:
    from vlac.cloud.learner.episodes import EpisodeData

FIELDS = ("text", "pooled", "proprio", "tokens", "reward", "done", "next_pooled",
          "next_proprio")


def episode_transitions(ep: EpisodeData, grid: int) -> dict[str, np.ndarray]:
    """All used steps of ``ep`` as transition columns, plus ``human`` (the step was the
    operator's) to route them."""
    n = len(ep.rewards)
    pooled = pool_features(ep.feat, grid)
    nxt = np.minimum(np.arange(n) + 1, len(ep) - 1)
    done = np.zeros(n, np.float32)
    if n and ep.terminal:
        done[-1] = 1.0
    return {"text": np.repeat(ep.text[None].astype(np.float32), n, 0),
            "pooled": pooled[:n], "proprio": ep.proprio[:n].astype(np.float32),
            "tokens": ep.tokens[:n].astype(np.int64),
            "reward": np.asarray(ep.rewards, np.float32), "done": done,
            "next_pooled": pooled[nxt], "next_proprio": ep.proprio[nxt].astype(np.float32),
            "human": ep.intervention[:n].astype(bool)}


class TransitionBuffer:
    """Columns in preallocated arrays (allocated on the first add, so an empty buffer costs
    nothing); FIFO: when an add does not fit, the oldest half (at least) is dropped."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.size = capacity, 0
        self.cols: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.size

    def add(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["reward"])
        if n == 0:
            return
        if n > self.capacity:  # keep the newest that fit
            rows = {k: v[-self.capacity:] for k, v in rows.items()}
            n = self.capacity
        if not self.cols:
            self.cols = {k: np.empty((self.capacity, *rows[k].shape[1:]), rows[k].dtype)
                         for k in FIELDS}
        if self.size + n > self.capacity:
            drop = max(self.size // 2, self.size + n - self.capacity)
            for v in self.cols.values():
                v[:self.size - drop] = v[drop:self.size]
            self.size -= drop
        for k in FIELDS:
            self.cols[k][self.size:self.size + n] = rows[k]
        self.size += n

    def rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.cols.items()}


class Replay:
    """The ``human`` and ``online`` buffers and RLPD's symmetric sampling."""

    def __init__(self, capacity: int, grid: int) -> None:
        self.grid = grid
        self.human = TransitionBuffer(capacity)
        self.online = TransitionBuffer(capacity)

    def __len__(self) -> int:
        return len(self.human) + len(self.online)

    def add_episode(self, ep: EpisodeData, *, human: bool = False) -> None:
        """``ep``'s transitions; a demonstration's all go to ``human`` (``human=True``),
        otherwise each step by who drove it."""
        rows = episode_transitions(ep, self.grid)
        by_human = np.ones(len(rows["reward"]), bool) if human else rows["human"]
        for buf, mask in ((self.human, by_human), (self.online, ~by_human)):
            if mask.any():
                buf.add({k: v[mask] for k, v in rows.items() if k in FIELDS})

    def sample(self, rng: np.random.Generator, k: int) -> dict[str, torch.Tensor]:
        """``k`` transitions: half from each buffer while both hold data (RLPD), else all
        from the one that does."""
        parts = [b for b in (self.human, self.online) if len(b)]
        if not parts:
            raise ValueError("the replay is empty")
        sizes = [k // len(parts)] * len(parts)
        sizes[-1] += k - sum(sizes)
        rows = [b.rows(rng.integers(0, len(b), m)) for b, m in zip(parts, sizes, strict=True)]
        out = {}
        for name in FIELDS:
            x = np.concatenate([r[name] for r in rows])
            out[name] = torch.from_numpy(x if name == "tokens" else x.astype(np.float32))
        return out

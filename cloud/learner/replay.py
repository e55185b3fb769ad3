"""The behaviour-cloning pool of each update: operator takeovers, replayed demonstrations and
(optionally) the policy's own successes.

- Takeovers: the steps an operator drove in this update's episodes; with ``takeover_replay``
  N, those of the last N episodes that had one (HG-DAgger's aggregated data: expert actions in
  states the policy itself reached). Takeover steps are never PPO samples.
- Demonstrations: up to ``demo_episodes`` stored successful demos, round-robin over tasks
  (offline demonstration replay); the small actor's image features of them come from the
  cache shared with `vlac actor pretrain` (``actors.LearnerActor.observe_demo``).
- Successes (``success_replay`` N): the policy's own steps of the fleet's last N successful
  episodes (self-imitation).

The pools live in memory: a restarted learner starts them afresh.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlac.cloud.learner.actors import model_input
from vlac.cloud.learner.distributed import barrier
from vlac.cloud.learner.episodes import EpisodeData, EpisodeLoader, episode_key

if TYPE_CHECKING:
    from vlac.cloud.learner.config import BCConfig


class StepPool:
    """Behaviour-cloning steps (takeovers, demonstrations) kept as parts; samples rows."""

    def __init__(self, parts: list[dict[str, np.ndarray]]) -> None:
        self.parts = [p for p in parts if len(p["tokens"])]
        self.ends = np.cumsum([len(p["tokens"]) for p in self.parts])

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def sample(self, rng: np.random.Generator, k: int) -> dict[str, torch.Tensor | list[str]]:
        idx = rng.integers(0, len(self), k)
        part = np.searchsorted(self.ends, idx, side="right")
        starts = np.concatenate([[0], self.ends[:-1]])
        rows = {name: [] for name in ("text", "feat", "proprio", "tokens")}
        for i in np.unique(part):
            sel = idx[part == i] - starts[i]
            for name in rows:
                rows[name].append(self.parts[i][name][sel])
        return {name: model_input(name, np.concatenate(v)) for name, v in rows.items()}


def steps_of(text: np.ndarray, feat: np.ndarray, proprio: np.ndarray,
             tokens: np.ndarray) -> dict[str, np.ndarray]:
    return {"text": np.repeat(text[None], len(tokens), 0), "feat": feat,
            "proprio": proprio.astype(np.float32), "tokens": tokens.astype(np.int64)}


def _steps_where(ep: EpisodeData, mask: np.ndarray) -> dict[str, np.ndarray]:
    return steps_of(ep.text, ep.feat[mask], ep.proprio[mask], ep.tokens[mask])


class BCReplay:
    """Builds each update's ``StepPool`` and keeps what later updates replay."""

    def __init__(self, cfg: BCConfig, loader: EpisodeLoader, rank: int = 0,
                 world: int = 1) -> None:
        self.cfg, self.loader = cfg, loader
        self.rank, self.world = rank, world
        self._wins: deque[dict[str, np.ndarray]] = deque(maxlen=cfg.success_replay or None)
        self._takeovers: deque[dict[str, np.ndarray]] = deque(
            maxlen=cfg.takeover_replay or None)
        self._demos: dict[str, dict[str, np.ndarray]] = {}

    def demo_episodes(self) -> list[dict]:
        """Up to ``demo_episodes`` successful demonstrations, taken round-robin over tasks."""
        if self.cfg.coef == 0 or self.cfg.demo_episodes == 0:
            return []
        by_task: dict[str, list[dict]] = {}
        for e in self.loader.store.list_episodes():
            if e.get("source") == "demo" and e["outcome"]["success"]:
                by_task.setdefault(e.get("task_id") or e["task"], []).append(e)
        queues = [sorted(v, key=lambda e: -e["completed_at"]) for _, v in sorted(by_task.items())]
        out: list[dict] = []
        while len(out) < self.cfg.demo_episodes and any(queues):
            for q in queues:
                if q and len(out) < self.cfg.demo_episodes:
                    out.append(q.pop(0))
        return out

    def pool(self, episodes: list[EpisodeData], demos: list[dict]) -> StepPool:
        """This update's pool: takeovers (aggregated with ``takeover_replay``), the steps of
        ``demos`` and the replayed successes (this update's included)."""
        if self.cfg.success_replay:  # the policy's own steps of its successful episodes
            self._wins.extend(_steps_where(ep, ~ep.intervention) for ep in episodes
                              if ep.success and not ep.intervention.all())
        taken = [_steps_where(ep, ep.intervention) for ep in episodes if ep.intervention.any()]
        if self.cfg.takeover_replay:  # aggregate: this update's and earlier ones' takeovers
            self._takeovers.extend(taken)
            taken = list(self._takeovers)
        return StepPool(taken + self._demo_steps(demos) + list(self._wins))

    def _demo_features(self, info: dict) -> np.ndarray:
        return self.loader.actor.observe_demo(info, lambda: self.loader.frames(info)[1])

    def _demo_steps(self, infos: list[dict]) -> list[dict[str, np.ndarray]]:
        """BC steps of the replayed demonstrations (features from the shared cache, which
        rank 0 fills first so that no two processes write one cache file)."""
        todo = [i for i in infos if episode_key(i) not in self._demos]
        if todo and self.world > 1:
            if self.rank == 0:
                for info in todo:
                    self._demo_features(info)
            barrier()
        for info in todo:
            cols = self.loader.store.load_columns(info["robot_id"], info["episode_id"],
                                                  ["proprio", "action_tokens"])
            self._demos[episode_key(info)] = steps_of(
                self.loader.text(info["task"]), self._demo_features(info), cols["proprio"],
                cols["action_tokens"])
        self._demos = {episode_key(i): self._demos[episode_key(i)] for i in infos}
        return list(self._demos.values())

"""PPO's value function with capacity of its own (``--algorithm.value separate``).

VLA-RL, DPPO and RLinf's pi0 PPO give the value function its own network (or a detached
trunk), a learning rate 10-300x the policy's and critic-only warm-up iterations before the
policy moves; the value head on the policy's trunk starts from scratch and its loss moves the
policy too (docs/training.md, "Rewards and advantages"). Here V(s) is a network of its own over
the same inputs as the off-policy algorithm's (``qfunction.StateEncoder``: the frozen image
features pooled to the policy's grid, the sentence, the proprioception), with its own engine
and learning rate, fitted to each update's GAE returns for ``vf_epochs`` passes; GAE then uses
its values instead of the policy's value head, whose loss is switched off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vlac.cloud.learner.algorithms.qfunction import StateEncoder, mlp, pool_features

if TYPE_CHECKING:
    from vlac.cloud.learner.algorithms.ppo import PPOConfig
    from vlac.cloud.learner.episodes import EpisodeData


class StateValue(nn.Module):
    def __init__(self, cells: int, proprio_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.encoder = StateEncoder(cells, proprio_dim)
        self.head = mlp(self.encoder.out_dim, hidden, 2)

    def forward(self, text: torch.Tensor, pooled: torch.Tensor,
                proprio: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(text, pooled, proprio))[:, 0]


class SeparateValue:
    """The value network, its engine, and what PPO asks of it: values per step, and a fit
    to the batch's returns."""

    def __init__(self, cfg: PPOConfig, grid: int, proprio_dim: int, make_engine,
                 world: int = 1, rank: int = 0) -> None:
        self.cfg, self.grid, self.world, self.rank = cfg, grid, world, rank
        self.engine = make_engine(StateValue(grid * grid, proprio_dim), lr=cfg.vf_lr,
                                  micro_batch=max(1, cfg.minibatch_size // world),
                                  grad_clip=cfg.max_grad_norm)

    def _inputs(self, text: np.ndarray, pooled: np.ndarray, proprio: np.ndarray):
        return (torch.from_numpy(np.asarray(text, np.float32)),
                torch.from_numpy(pooled.astype(np.float32)),
                torch.from_numpy(np.asarray(proprio, np.float32)))

    @torch.no_grad()
    def values(self, episodes: list[EpisodeData], batch: int = 512) -> list[np.ndarray]:
        """V of every recorded step of each episode (the last one bootstraps a cut episode)."""
        out = []
        for ep in episodes:
            parts = []
            for s in range(0, len(ep), batch):
                sl = slice(s, s + batch)
                n = len(ep.proprio[sl])
                parts.append(self.engine.module(*self._inputs(
                    np.repeat(ep.text[None], n, 0), pool_features(ep.feat[sl], self.grid),
                    ep.proprio[sl])).numpy())
            out.append(np.concatenate(parts) if parts else np.zeros(0, np.float32))
        return out

    def fit(self, samples: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
        """``vf_epochs`` passes of shuffled minibatches of 0.5 (V - return)^2 (every process
        its share of each minibatch). Returns the mean loss."""
        n = len(samples.get("b_returns", ()))
        if n < self.world:
            return {}
        rng = np.random.default_rng([seed, 2])
        pooled = pool_features(samples["feat"], self.grid)  # once, not once per epoch
        losses = []
        n_mb = max(1, min(-(-n // self.cfg.minibatch_size), n // self.world))
        for _ in range(self.cfg.vf_epochs):
            for chunk in np.array_split(rng.permutation(n), n_mb):
                idx = chunk[self.rank::self.world]
                v = self.engine.module(*self._inputs(samples["text"][idx], pooled[idx],
                                                     samples["proprio"][idx]))
                target = torch.from_numpy(samples["b_returns"][idx].astype(np.float32))
                loss = 0.5 * ((v - target) ** 2).mean()
                self.engine.backward(loss)
                self.engine.step()
                losses.append(loss.item())
        return {"value_net_loss": float(np.mean(losses))}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.engine.module.state_dict(),
                "optimizer": self.engine.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.module.load_state_dict(state["weights"])
        self.engine.optimizer.load_state_dict(state["optimizer"])

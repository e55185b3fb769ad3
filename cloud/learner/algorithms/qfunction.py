"""The off-policy algorithm's own value functions: a Q ensemble and a state value V, trained
by implicit Q-learning (IQL: Kostrikov et al. 2022) on replayed transitions.

They share nothing with the policy (not its trunk, not its optimizer): HIL-SERL, ConRFT and
PA-RL all give the Q-function its own network. Inputs are the frozen image features pooled to
the policy's own grid (``pool_features``: what the policy's ``image_tokens`` reads, so nothing
the policy sees is lost), the task sentence's embedding, the proprioception and, for Q, the
action as the continuous values its tokens stand for (bins mapped to [-1, 1]), so that
neighbouring tokens get neighbouring values. LayerNorm after every hidden layer, as RLPD
found necessary for stable TD learning with few samples.

IQL never evaluates an action outside the data in its targets: V(s) is the ``expectile`` of
Q(s, a) over the replayed actions (``expectile_loss``), and Q(s, a) regresses to r + gamma V(s')
(``iql_q_loss``). That is what makes replaying demonstrations, takeovers and a lagging INT8
fleet's actions safe without importance weights.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vlac.cloud.models.encoders import GRID, IMAGE_DIM, TEXT_DIM


def pool_features(feat: np.ndarray, grid: int) -> np.ndarray:
    """(T, GRID*GRID, D) cached features -> (T, grid*grid, D) block means (float16): the
    policy pools the same way (adaptive average pooling of the 4x4 map), so
    ``unpool_features`` of this gives it exactly the tokens it would have computed."""
    t, n, d = feat.shape
    if n != GRID * GRID or GRID % grid:
        raise ValueError(f"features of shape {feat.shape} cannot be pooled to a {grid}x{grid} "
                         f"grid (expected (T, {GRID * GRID}, D) and a grid dividing {GRID})")
    k = GRID // grid
    x = feat.astype(np.float32).reshape(t, grid, k, grid, k, d).mean((2, 4))
    return x.reshape(t, grid * grid, d).astype(np.float16)


def unpool_index(grid: int) -> np.ndarray:
    """Which pooled cell each of the GRID*GRID positions belongs to."""
    r, c = np.divmod(np.arange(GRID * GRID), GRID)
    k = GRID // grid
    return (r // k) * grid + c // k


def unpool_features(pooled: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, grid*grid, D) -> (B, GRID*GRID, D), each cell repeated over its block."""
    return pooled[:, torch.from_numpy(unpool_index(grid))]


def tokens_to_unit(tokens: torch.Tensor, bins: int) -> torch.Tensor:
    """Action tokens (B, A) -> their bins' centres in [-1, 1] (B, A)."""
    return tokens.float() / (bins - 1) * 2 - 1


def mlp(d_in: int, hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(hidden, 1))


class StateEncoder(nn.Module):
    """Pooled image cells + their mean, the sentence and the proprioception -> one vector."""

    def __init__(self, cells: int, proprio_dim: int, width: int = 64) -> None:
        super().__init__()
        self.img = nn.Sequential(nn.LayerNorm(IMAGE_DIM), nn.Linear(IMAGE_DIM, width))
        self.text = nn.Linear(TEXT_DIM, width)
        self.out_dim = (cells + 1) * width + width + proprio_dim

    def forward(self, text: torch.Tensor, pooled: torch.Tensor,
                proprio: torch.Tensor) -> torch.Tensor:
        x = pooled.float()
        x = torch.cat([x, x.mean(1, keepdim=True)], 1)
        return torch.cat([self.img(x).flatten(1), self.text(text.float()), proprio.float()], 1)


class ValueFunctions(nn.Module):
    """A Q ensemble (``n_q`` heads) and V over one state encoder, so that one optimizer (one
    engine) trains them all. Ensemble members share the encoder and differ in their heads,
    as SERL's critics do: the image projection is most of the compute."""

    def __init__(self, cells: int, proprio_dim: int, action_dim: int, n_q: int = 2,
                 hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.encoder = StateEncoder(cells, proprio_dim)
        d = self.encoder.out_dim
        self.q_heads = nn.ModuleList(mlp(d + action_dim, hidden, layers) for _ in range(n_q))
        self.v_head = mlp(d, hidden, layers)

    def q(self, text: torch.Tensor, pooled: torch.Tensor, proprio: torch.Tensor,
          action: torch.Tensor) -> torch.Tensor:
        """(n_q, B) Q-values; ``action`` is continuous (B, A) in [-1, 1]."""
        return self.q_of(self.encoder(text, pooled, proprio), action)

    def v(self, text: torch.Tensor, pooled: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        return self.v_of(self.encoder(text, pooled, proprio))

    def q_of(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Q from an encoded state (to encode once for both Q and V)."""
        x = torch.cat([state, action.float()], 1)
        return torch.stack([h(x)[:, 0] for h in self.q_heads])

    def v_of(self, state: torch.Tensor) -> torch.Tensor:
        return self.v_head(state)[:, 0]


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Asymmetric squared loss |tau - 1(diff < 0)| diff^2 (mean), diff = Q - V: with tau > 0.5
    V approaches an upper expectile of Q over the data's actions (tau = 0.5: the mean)."""
    weight = torch.where(diff < 0, 1 - tau, tau)
    return (weight * diff ** 2).mean()


def td_targets(rewards: torch.Tensor, dones: torch.Tensor, next_v: torch.Tensor,
               gamma: float) -> torch.Tensor:
    """r + gamma (1 - done) V(s'): no bootstrap past an episode's end."""
    return rewards + gamma * (1 - dones.float()) * next_v


def iql_q_loss(q_all: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the ensemble of each member's squared TD error. ``q_all`` (n, B)."""
    return ((q_all - targets.detach()[None]) ** 2).mean(1).sum()


@torch.no_grad()
def polyak(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(1 - tau).add_(o.detach(), alpha=tau)

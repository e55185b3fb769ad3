"""RL algorithms the learner process can drive, by name (``--algorithm.name``).

``base``: the interface (``Algorithm``: ``update(batch) -> stats``, ``state_dict`` /
``load_state_dict``), the batch it gets (``UpdateBatch``) and the registry; ``ppo``: PPO on
action tokens with behaviour cloning, the first implementation.
"""

from vlac.cloud.learner.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Context,
    UpdateBatch,
    algorithm_class,
    make_algorithm,
    register,
)
from vlac.cloud.learner.algorithms.ppo import PPO, PPOConfig

__all__ = ["ALGORITHMS", "PPO", "Algorithm", "Context", "PPOConfig", "UpdateBatch",
           "algorithm_class", "make_algorithm", "register"]

"""RL algorithms the learner process can drive, by name (``--algorithm.name``).

``base``: the interface (``Algorithm``: ``update(batch) -> stats``, ``state_dict`` /
``load_state_dict``), the batch it gets (``UpdateBatch``), the config sections' base
(``AlgorithmConfig``) and the registry; ``ppo``: PPO on action tokens with behaviour cloning;
``parl``: PA-RL (a Q-function of its own ranks sampled actions, the best are distilled) with
IQL value functions (``qfunction``) on replayed transitions (``transitions``).
"""

from vlac.cloud.learner.algorithms.base import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    Algorithm,
    AlgorithmConfig,
    Context,
    UpdateBatch,
    algorithm_class,
    algorithm_config,
    make_algorithm,
    register,
)
from vlac.cloud.learner.algorithms.parl import Parl, ParlConfig
from vlac.cloud.learner.algorithms.ppo import PPO, PPOConfig

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "PPO", "Algorithm", "AlgorithmConfig", "Context",
           "PPOConfig", "Parl", "ParlConfig", "UpdateBatch", "algorithm_class",
           "algorithm_config", "make_algorithm", "register"]

"""The RL learner: the fleet's episodes in, better policies out.

What it offers:

- ``process``: `vlac learner run`: ``main(cfg)`` and ``Learner`` (the loop: poll the store,
  reward, ``algorithm.update``, checkpoint, publish);
- ``config``: ``LearnerConfig`` and its sections (``RewardsConfig``, ``BCConfig``,
  ``PublishConfig``; the algorithm's own, ``algorithms.ppo.PPOConfig``);
- ``algorithms``: the RL algorithm interface (``Algorithm``, ``UpdateBatch``), its registry
  (``--algorithm.name``) and PPO, the first implementation.

The rest serves the process: ``episodes`` (polling, featurising), ``rewards`` (reward source
and shaping), ``replay`` (the behaviour-cloning pools), ``checkpoint``, ``distributed``
(broadcast, barrier, means over ranks) and ``plots``.
"""

from vlac.cloud.learner.algorithms import Algorithm, UpdateBatch, register
from vlac.cloud.learner.config import BCConfig, LearnerConfig, PublishConfig, RewardsConfig
from vlac.cloud.learner.process import Learner, main

__all__ = ["Algorithm", "BCConfig", "Learner", "LearnerConfig", "PublishConfig",
           "RewardsConfig", "UpdateBatch", "main", "register"]

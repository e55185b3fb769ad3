"""The RL learner: the fleet's episodes in, better policies out.

``process``: `vlac learner run` (store polling, rewards, checkpoints, publishing);
``ppo``: PPO's maths on action tokens.
"""

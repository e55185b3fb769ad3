"""Policies the edge agent can run: ``act(obs) -> PolicyStep``. The exported actor under ONNX
Runtime is ``vlac.edge.runtime.OnnxPolicy``; here are the random policy and the scripted
expert with action noise (for tests and bootstrapping)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vlac.edge.robots.robot import Observation
from vlac.shared.tokenizer import ActionTokenizer
from vlac.shared.wire import RobotSpec


@dataclass
class PolicyStep:
    action: np.ndarray
    """(action_dim,) float32 continuous action sent to the robot (decoded from tokens)."""
    tokens: np.ndarray
    """(action_dim,) int32 action tokens."""
    logprob: float
    """Behaviour log-probability of the tokens under this policy (0 if deterministic)."""
    version: int
    """Policy version that chose the step."""


class Policy(abc.ABC):
    version: int = 0

    @abc.abstractmethod
    def act(self, obs: Observation) -> PolicyStep: ...


class RandomPolicy(Policy):
    """Uniform over tokens: the log-probability is exact (-action_dim * log(bins))."""

    def __init__(self, spec: RobotSpec, seed: int = 0, version: int = 0) -> None:
        self.tok = ActionTokenizer(spec.action_low, spec.action_high, spec.action_bins)
        self.rng = np.random.default_rng(seed)
        self.version = version

    def act(self, obs: Observation) -> PolicyStep:
        tokens = self.rng.integers(0, self.tok.bins, self.tok.dim).astype(np.int32)
        return PolicyStep(self.tok.decode(tokens), tokens,
                          float(-self.tok.dim * np.log(self.tok.bins)), self.version)


class ScriptedPolicy(Policy):
    """A scripted expert (a Meta-World task name, or a robot's ``expert_action``; see
    ``ScriptedExpert``) with Gaussian action noise, tokenized like a learned policy would be.
    Its log-probability is that of the noise model's token bins only approximately, so it is
    recorded as 0; do not use these rollouts as PPO samples."""

    def __init__(self, task: str | Callable[[Observation], np.ndarray], spec: RobotSpec,
                 noise: float = 0.3, seed: int = 0, version: int = 0) -> None:
        from vlac.edge.hitl.operator import ScriptedExpert

        self.expert = ScriptedExpert(task, always=True, noise=noise, seed=seed)
        self.tok = ActionTokenizer(spec.action_low, spec.action_high, spec.action_bins)
        self.version = version

    def act(self, obs: Observation) -> PolicyStep:
        tokens = self.tok.encode(self.expert.expert_action(obs))
        return PolicyStep(self.tok.decode(tokens), tokens, 0.0, self.version)

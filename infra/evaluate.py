"""Policy evaluation in simulation: success rate per task over fresh layouts.

Evaluation layouts come from seeds disjoint from the demonstration seeds, so a policy is never
scored on a layout it imitated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from vlac.edge.agent import run_episode
from vlac.edge.policy import Policy, PolicyStep
from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
from vlac.edge.robots.robot import Observation
from vlac.shared.episode import StepColumns

EVAL_SEED = 100_000


class ActorPolicy(Policy):
    """Edge Policy interface over a cloud TorchActor (for evaluation in one process)."""

    def __init__(self, actor, temperature: float = 1.0, greedy: bool = True,
                 mean: bool = False) -> None:
        self.actor = actor
        self.temperature = temperature
        self.greedy = greedy
        self.mean = mean  # the mean-bin decode (TorchActor.mean_tokens) instead
        self.version = actor.version

    def act(self, obs: Observation) -> PolicyStep:
        image = obs.images[self.actor.camera]
        if self.mean:
            tokens = self.actor.mean_tokens(image, obs.proprio, obs.task, self.temperature)
            return PolicyStep(self.actor.tokenizer.decode(tokens), tokens, 0.0, self.version)
        action, tokens, logp, _ = self.actor.act(image, obs.proprio, obs.task,
                                                  self.temperature, self.greedy)
        return PolicyStep(action, tokens, logp, self.version)


class _Discard:
    def add(self, steps: StepColumns) -> None:
        pass

    def end(self, success: bool, reason: str = "") -> None:
        pass


def evaluate(make_policy: Callable[[], Policy], tasks: list[str], episodes: int,
             seed: int = EVAL_SEED, max_steps: int = 150,
             console: Console | None = None) -> dict[str, dict]:
    warnings.filterwarnings("ignore")
    console = console or Console(width=100)
    policy = make_policy()
    out = {}
    for ti, task in enumerate(tasks):
        cfg = MetaWorldRobotConfig(task=task, seed=seed + ti, max_steps=max_steps)
        wins, lengths = [], []
        with MetaWorldRobot(cfg) as robot:
            for _ in tqdm(range(episodes), desc=f"eval {task}", mininterval=10):
                res = run_episode(robot, policy, lambda _t: _Discard())
                wins.append(res.success)
                lengths.append(res.steps)
        out[task] = {"success_rate": float(np.mean(wins)), "episodes": episodes,
                     "mean_len": float(np.mean(lengths)),
                     "outcomes": [bool(w) for w in wins]}  # layout i: same seed, same layout
    table = Table(title="policy evaluation (fresh layouts)")
    for col in ("task", "episodes", "success", "mean length"):
        table.add_column(col)
    for t, r in out.items():
        table.add_row(t, str(r["episodes"]), f"{r['success_rate']:.0%}", f"{r['mean_len']:.0f}")
    table.add_row("mean", "", f"{np.mean([r['success_rate'] for r in out.values()]):.0%}", "")
    console.print(table)
    return out

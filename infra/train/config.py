"""`vlac train`'s config (``TrainConfig``, with the human-in-the-loop section
``vlac.shared.hitl.HitlConfig``) and where everything lives in its workdir (``Paths``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlac.cloud.learner.algorithms.base import (
    AlgorithmConfig,
    algorithm_config,
    default_algorithm_config,
)
from vlac.shared.config import check, opt
from vlac.shared.hitl import HitlConfig
from vlac.shared.tasks import HEADLINE_TASKS

TASKS = list(HEADLINE_TASKS)
QUICK_TASKS = ["button-press-v3", "drawer-open-v3"]
"""The quick run's tasks: the two that the 2-demo imitation policy half solves, so that its
few PPO updates have something to show (docs/training.md)."""


@dataclass
class TrainConfig:
    workdir: Path = opt(Path(".cache/train"), "Everything lives here (resumable).")
    quick: bool = opt(False, "Small and fast (under 15 minutes on 2 cores): fewer demos, "
                      "shorter training, fewer RL episodes.")
    tasks: list[str] = opt([], "Meta-World tasks; one robot per task (empty: reach, "
                           "button-press, drawer-open and push; quick: button-press and "
                           "drawer-open).")
    episodes: int = opt(0, "RL episodes in total across robots (0: 800, quick: 80).")
    demos_per_task: int = opt(0, "Expert demos per task for the critic (0: 12, quick: 6).")
    actor_demos_per_task: int = opt(2, "Demos the imitation actor learns from (the ~30% knob).")
    critic_steps: int = opt(0, "Critic training steps (0: 3000, quick: 600).")
    actor_steps: int = opt(0, "Imitation steps (0: 2000, quick: 600).")
    episodes_per_update: int = opt(8, "Episodes per learner update.")
    publish_every: int = opt(1, "Learner versions between publications.")
    algorithm: AlgorithmConfig = field(default_factory=default_algorithm_config, metadata={
        "help": "The learner's RL algorithm (--algorithm.name) and its settings (its "
                "temperature is always --temperature, the robots')."})
    max_steps: int = opt(150, "Step limit of an episode.")
    layout_repeats: int = opt(1, "Episodes each simulated robot starts from one layout "
                              "before drawing the next (groups for --algorithm.group-by "
                              "start).")
    critic: Path | None = opt(None, "Use this critic instead of training one.")
    actor: Path | None = opt(None, "Use this imitation actor instead of training one.")
    hitl: HitlConfig = field(default_factory=HitlConfig, metadata={
        "help": "Human-in-the-loop protocols, the robots' operator and the learner's "
                "behaviour cloning."})
    timeout_s: float = opt(0.0, "Stop after this long (0: when the episodes are done).")
    object_store: str = opt("", "Weights and checkpoints: a folder or s3://bucket/prefix?"
                            "endpoint=URL (empty: WORKDIR/objects).")
    temperature: float = opt(1.0, "Robots' sampling temperature (the learner scores their "
                             "tokens at the same one).")
    final_eval: int | None = opt(None, "After the RL loop the starting and the final policy "
                                 "each act greedily on this many fixed evaluation layouts per "
                                 "task (the same ones, never trained on), in the report "
                                 "(default: 20; quick: 10; 0: skip).")
    precision: Literal["int8", "fp32"] = opt(
        "int8", "What the simulated robots run: int8 (the edge artifact: the actor's INT8 "
        "encoder and INT8-stored head weights) or fp32 (the same encoder and the fp32 head: "
        "exactly the learner's actor).")

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.tasks = list(self.tasks) or list(QUICK_TASKS if self.quick else TASKS)
        for t in self.tasks:
            check(t.endswith("-v3"), "tasks", f"{t!r} is not a Meta-World v3 task")
        check(self.episodes >= 0, "episodes", "must be >= 0")
        check(self.actor_demos_per_task >= 1, "actor_demos_per_task", "must be >= 1")
        check(self.episodes_per_update >= 1, "episodes_per_update", "must be >= 1")
        check(self.layout_repeats >= 1, "layout_repeats", "must be >= 1")
        check(self.precision in ("int8", "fp32"), "precision", "use int8 or fp32")
        check(self.temperature > 0, "temperature", "must be > 0")
        self.algorithm = algorithm_config(self.algorithm)
        if hasattr(self.algorithm, "temperature"):  # the learner scores the robots' tokens
            self.algorithm.temperature = self.temperature
        for name in ("critic", "actor"):
            path = getattr(self, name)
            if path is not None:
                setattr(self, name, Path(path))
                check(Path(path).exists(), name, f"{path} does not exist")
        self.episodes = self.episodes or (80 if self.quick else 800)
        self.demos_per_task = self.demos_per_task or (6 if self.quick else 12)
        self.critic_steps = self.critic_steps or (600 if self.quick else 3000)
        self.actor_steps = self.actor_steps or (600 if self.quick else 2000)
        if self.final_eval is None:
            self.final_eval = 10 if self.quick else 20
        check(self.final_eval >= 0, "final_eval", "must be >= 0 (0: skip)")
        check(self.demos_per_task > self.actor_demos_per_task, "demos_per_task",
              "must exceed actor_demos_per_task (the critic holds some out)")


class Paths:
    """Where each part keeps its files under the workdir."""

    def __init__(self, root: Path, object_store: str = "") -> None:
        self.root = root
        self.keys, self.store, self.fleet = root / "keys", root / "store", root / "fleet"
        self.objects = object_store or str(root / "objects")
        self.critic_dir, self.actor_dir = root / "critic", root / "actor"
        self.features, self.export = root / "features", root / "export"
        self.signing = root / "keys" / "publisher" / "publisher.ed25519"
        self.learner = root / "learner"
        self.report = root / "report"
        self.logs = root / "logs"  # the job's log and one per process

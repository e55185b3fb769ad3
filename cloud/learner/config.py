"""``LearnerConfig``: the process's own fields at the top, then one section per concern.

``rewards`` (``--rewards.*``): where rewards come from and how they are shaped;
``algorithm`` (``--algorithm.*``): the RL algorithm by name and its settings (PPO's:
``algorithms.ppo.PPOConfig``; PA-RL's: ``algorithms.parl.ParlConfig``); ``bc`` (``--bc.*``):
the behaviour-cloning term and what feeds it (``vlac.shared.hitl.BCConfig``, the same
section ``vlac train`` passes through); ``publish`` (``--publish.*``): versions out to the
fleet. In YAML the sections are nested mappings (``algorithm: {clip: 0.2}``).
docs/training.md says why the defaults are what they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vlac.cloud.fleet.publisher import PublisherConfig
from vlac.cloud.learner.actors import ActorConfig
from vlac.cloud.learner.algorithms import AlgorithmConfig, algorithm_config
from vlac.cloud.learner.algorithms.base import default_algorithm_config
from vlac.shared.config import check, opt
from vlac.shared.hitl import BCConfig
from vlac.shared.tasks import HEADLINE_TASKS


@dataclass
class RewardsConfig:
    mode: Literal["critic", "sparse"] = opt("critic", "critic: the critic's progress deltas; "
                                            "sparse: the success reward alone, at the end of "
                                            "a successful episode.")
    critic: Path | None = opt(None, "Critic checkpoint to score episodes in this process.")
    service: str = opt("", "Address of `vlac critic serve` (instead of --rewards.critic).")
    timeout_s: float = opt(120.0, "Timeout of one reward request to the service.")
    stride: int = opt(1, "k of r_t = delta(o_t, o_t+k).")
    pairs: Literal["from_first", "consecutive"] = opt(
        "from_first", "Critic rewards from the progress since the episode's first frame "
        "(potential differences; a return is the final progress) or from consecutive-pair "
        "deltas delta(o_t, o_t+k).")
    done_threshold: float = opt(1.0, "The episode ends at the first step whose critic done "
                                "probability exceeds this (1: never).")
    success_reward: float = opt(1.0, "Reward added at the end of an episode the robot reported "
                                "as a success (the whole reward with --rewards.mode sparse).")

    def __post_init__(self) -> None:
        if self.critic is not None:
            self.critic = Path(self.critic)
            check(self.critic.exists(), "rewards.critic", f"{self.critic} does not exist; "
                  "train one with `vlac critic train`")
        check(self.mode in ("critic", "sparse"), "rewards.mode", "use critic or sparse")
        check(not (self.critic and self.service), "rewards.service",
              "give either --rewards.critic or --rewards.service, not both")
        check(self.stride >= 1, "rewards.stride", "must be >= 1")
        check(self.pairs in ("from_first", "consecutive"), "rewards.pairs",
              "use from_first or consecutive")
        check(math.isfinite(self.success_reward), "rewards.success_reward", "must be a number")
        check(0 < self.done_threshold <= 1, "rewards.done_threshold", "must lie in (0, 1]")


@dataclass
class PublishConfig:
    enabled: bool = opt(False, "Export, quantize, sign and upload every --publish.every "
                        "versions to the fleet (and the init weights first, if the fleet has "
                        "no version yet).")
    every: int = opt(1, "Updates between calls of the publish hook.")
    tasks: list[str] = opt(list(HEADLINE_TASKS), "Tasks whose sentences published versions "
                           "carry (and whose demos calibrate INT8).")
    publisher: PublisherConfig = field(default_factory=PublisherConfig,
                                       metadata={"help": "Where and how versions go out."})

    def __post_init__(self) -> None:
        check(self.every >= 1, "publish.every", "must be >= 1")


@dataclass
class LearnerConfig:
    store_root: Path | str = opt(Path(".cache/store"), "Episode store the fleet's episodes "
                                 "arrive in: a folder or s3://BUCKET/PREFIX?endpoint=URL.")
    init: Path = opt(Path(".cache/actor/actor.pt"), "Actor checkpoint to start from "
                     "(`vlac actor pretrain`; with --actor.type hf a transformers checkpoint "
                     "folder); its version is the learner's first version.")
    out: Path = opt(Path(".cache/learner"), "Output folder: local checkpoints, TensorBoard "
                    "events (tb/), learner_curves.png, learner_log.json, actor.pt.")
    object_store: str = opt("", "Where checkpoints are uploaded and resumed from (a folder or "
                            "s3://bucket/prefix?endpoint=URL; empty: OUT/objects).")
    features: Path = opt(Path(".cache/critic/features"), "Image feature cache of the "
                         "demonstrations (shared with `vlac actor pretrain`).")
    camera: str = opt("", "Camera the actor sees (empty: the --init actor's camera).")
    episodes_per_update: int = opt(8, "Episodes gathered for one update.")
    max_updates: int = opt(0, "Stop after this many updates in this run (0: no limit).")
    once: bool = opt(False, "Consume what the store holds now (the rest in one smaller "
                     "update) and exit.")
    idle_timeout_s: float = opt(0.0, "Exit when no new episode arrived for this long "
                                "(0: wait forever).")
    poll_s: float = opt(2.0, "Seconds between looks at the store while waiting.")
    checkpoint_every: int = opt(10, "Updates between checkpoints (and one at exit).")
    keep_checkpoints: int = opt(3, "Checkpoints kept in the object store.")
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage (0, 1 or 2; 3 with --actor.type hf).")
    ds_config: Path | None = opt(None, "DeepSpeed JSON config (default: infra/deepspeed/).")
    seed: int = opt(0, "Seed of minibatch shuffling and BC sampling.")
    threads: int = opt(0, "torch threads (0: torch's default).")
    actor: ActorConfig = field(default_factory=ActorConfig, metadata={
        "help": "The actor being trained: its type and (hf) how."})
    rewards: RewardsConfig = field(default_factory=RewardsConfig, metadata={
        "help": "Where rewards come from and how they are shaped."})
    algorithm: AlgorithmConfig = field(default_factory=default_algorithm_config, metadata={
        "help": "The RL algorithm (--algorithm.name) and its settings."})
    bc: BCConfig = field(default_factory=BCConfig, metadata={
        "help": "Behaviour cloning on takeovers, demonstrations and replayed successes."})
    publish: PublishConfig = field(default_factory=PublishConfig, metadata={
        "help": "New versions out to the fleet."})

    def __post_init__(self) -> None:
        from vlac.cloud.store.location import store_location

        self.store_root = store_location(self.store_root)
        self.init, self.out = Path(self.init), Path(self.out)
        self.features = Path(self.features)
        if self.ds_config is not None:
            self.ds_config = Path(self.ds_config)
            check(self.ds_config.exists(), "ds_config", f"{self.ds_config} does not exist")
        self.algorithm = algorithm_config(self.algorithm)  # a mapping from YAML/flags
        check(self.episodes_per_update >= 1, "episodes_per_update", "must be >= 1")
        check(self.zero_stage in (0, 1, 2, 3), "zero_stage", "use 0, 1, 2 or 3")
        self._check_actor()
        check(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        check(self.max_updates >= 0, "max_updates", "must be >= 0 (0: no limit)")
        check(self.idle_timeout_s >= 0, "idle_timeout_s", "must be >= 0 (0: wait forever)")
        check(self.poll_s > 0, "poll_s", "must be > 0")

    def _check_actor(self) -> None:
        """What a transformers actor (``--actor.type hf``) cannot do yet, refused up front."""
        hf = self.actor.type == "hf"
        check(self.zero_stage < 3 or hf, "zero_stage", "ZeRO-3 serves --actor.type hf; the "
              "small actor is published whole from rank 0 (use 0, 1 or 2)")
        check(not (hf and self.zero_stage == 3 and self.actor.lora_rank), "zero_stage",
              "LoRA adapters are merged on one process: use ZeRO-2 with --actor.lora-rank "
              "(the adapters' optimizer state is small), or ZeRO-3 without LoRA")
        if hf:
            name = getattr(self.algorithm, "name", "")
            check(name == "ppo", "algorithm.name", f"{name!r} reads the small actor's image "
                  "features; a transformers actor trains with --algorithm.name ppo")
            check(getattr(self.algorithm, "value", "shared") == "shared", "algorithm.value",
                  "the separate value network reads the small actor's image features; use "
                  "--algorithm.value shared with --actor.type hf")

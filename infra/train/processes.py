"""`vlac train`'s processes on loopback and the config each one gets: ingest, the critic
service, the publisher's announcer, the learner and one simulated robot per task. The
human-in-the-loop sections go through as they are: ``cfg.hitl.operator`` to every
robot, ``cfg.hitl.bc`` to the learner."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlac.infra.train.config import Paths, TrainConfig
from vlac.infra.train.launch import Launcher
from vlac.infra.train.prepare import publisher_config
from vlac.shared.net import free_port

ROBOT = "vlac.edge.process:main"
TARGETS = {"ingest": "vlac.cloud.ingest.service:main",
           "critic": "vlac.cloud.critic.service:main",
           "publisher": "vlac.cloud.fleet.publisher:serve_main",
           "learner": "vlac.cloud.learner.process:main"}
SERVICES = ["ingest", "critic", "publisher", "learner"]


@dataclass(frozen=True)
class Addresses:
    ingest: str
    critic: str
    publisher: str

    @classmethod
    def free(cls) -> Addresses:
        return cls(*(f"tcp://127.0.0.1:{free_port()}" for _ in range(3)))


def stop_order(launcher: Launcher) -> list[str]:
    """Robots first (they finish the step and flush), then the learner, then the rest."""
    robots = [n for n in launcher.procs if n.startswith("robot")]
    return [*robots, "learner", "publisher", "critic", "ingest"]


def learner_config(cfg: TrainConfig, p: Paths, actor: Path, addr: Addresses):
    from vlac.cloud.learner.config import LearnerConfig, PublishConfig, RewardsConfig

    updates = max(1, -(-cfg.episodes // cfg.episodes_per_update))
    return LearnerConfig(
        store_root=p.store, init=actor, out=p.learner, object_store=p.objects,
        features=p.features, episodes_per_update=cfg.episodes_per_update, max_updates=updates,
        idle_timeout_s=60.0, poll_s=1.0, checkpoint_every=5, threads=1,
        rewards=RewardsConfig(mode="critic", service=addr.critic),
        algorithm=cfg.algorithm,
        bc=cfg.hitl.bc,
        publish=PublishConfig(enabled=True, every=cfg.publish_every, tasks=cfg.tasks,
                              publisher=publisher_config(p, addr.publisher, cfg.precision)))


def robot_config(cfg: TrainConfig, p: Paths, i: int, v0: Path, addr: Addresses,
                 done_before: int):
    """Robot ``i`` (task ``cfg.tasks[i]``) for the episodes left after ``done_before``."""
    from vlac.edge.process import EdgeAgentConfig
    from vlac.edge.robots.metaworld import MetaWorldRobotConfig
    from vlac.edge.transport.sender import SenderConfig
    from vlac.edge.updater import UpdaterConfig

    name = f"robot-{i}"
    operator = cfg.hitl.operator
    left = max(0, cfg.episodes - done_before)
    return EdgeAgentConfig(
        sender=SenderConfig(robot_id=name, ingest_address=addr.ingest,
                            robot_secret_key=p.keys / f"robots/{name}.key_secret",
                            server_public_key=p.keys / "server/ingest.key",
                            spool_dir=p.root / "spool" / name),
        robot=MetaWorldRobotConfig(task=cfg.tasks[i], seed=2000 + 97 * done_before + i,
                                   max_steps=cfg.max_steps,
                                   layout_repeats=cfg.layout_repeats),
        updater=UpdaterConfig(publisher_address=addr.publisher, object_store=p.objects,
                              publisher_key=p.signing.with_name("publisher.ed25519.pub"),
                              state_dir=p.root / "weights" / name),
        policy="onnx", policy_path=v0, temperature=cfg.temperature,
        episodes=-(-left // len(cfg.tasks)), chunk_steps=16, operator=operator,
        critic_address=addr.critic if operator.on_stall != "none" else "",
        sync_every=max(1, cfg.episodes_per_update * cfg.publish_every // len(cfg.tasks)),
        sync_timeout_s=180.0,  # an update whose episodes all tie publishes nothing
        quiet=True)


def wait_for_critic(address: str, timeout_s: float = 300.0) -> None:
    """Block until the critic service answers (it binds once its encoders are loaded)."""
    from vlac.cloud.critic.service import RewardClient

    client = RewardClient(address, timeout_s=timeout_s)
    try:
        client.episode_rewards("ready?", np.zeros((2, 64, 64, 3), np.uint8))
    finally:
        client.close()


def start_all(cfg: TrainConfig, p: Paths, launcher: Launcher, critic: Path, actor: Path,
              v0: Path, done_before: int) -> None:
    from vlac.cloud.critic.service import RewardServiceConfig
    from vlac.cloud.ingest.service import IngestConfig

    addr = Addresses.free()
    level = logging.INFO
    launcher.start("ingest", TARGETS["ingest"], IngestConfig(
        bind=addr.ingest, store_root=p.store, server_secret_key=p.keys / "server/ingest.key_secret",
        allowed_keys_dir=p.keys / "robots", status_every_s=0.0, fleet_dir=p.fleet), level=level)
    launcher.start("critic", TARGETS["critic"],
                   RewardServiceConfig(critic=critic, bind=addr.critic), level=level)
    if cfg.hitl.operator.on_stall != "none":  # robots check progress from their first episode on
        wait_for_critic(addr.critic)
    launcher.start("publisher", TARGETS["publisher"],
                   publisher_config(p, addr.publisher, cfg.precision), level=level)
    launcher.start("learner", TARGETS["learner"], learner_config(cfg, p, actor, addr),
                   level=level)
    for i in range(len(cfg.tasks)):
        launcher.start(f"robot-{i}", ROBOT, robot_config(cfg, p, i, v0, addr, done_before),
                       level=level)

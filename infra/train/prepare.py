"""What `vlac train` makes before the RL loop, each only if the workdir does not hold it yet:
CURVE keys, scripted-expert demonstrations, the critic, the imitation actor, its fp32 and
INT8 exports, and version 0 published to the fleet."""

from __future__ import annotations

from pathlib import Path

from vlac.infra.train.config import Paths, TrainConfig
from vlac.infra.train.logs import JobConsole


def prepare(cfg: TrainConfig, p: Paths, jc: JobConsole) -> tuple[Path, Path, Path]:
    """Keys, demos, critic, actor, v0 export + publication. Returns (critic, actor, v0)."""
    from vlac.shared import keys

    keys.generate(p.keys, [f"robot-{i}" for i in range(len(cfg.tasks))])
    collect_demos(cfg, p, jc)
    critic = train_critic(cfg, p, jc)
    actor = train_actor(cfg, p, jc)
    if cfg.precision == "int8":
        warn_if_int8_drifts(p, actor, jc)
    v0 = export_v0(cfg, p, actor, jc)
    publish_v0(cfg, p, v0)
    return critic, actor, v0


def collect_demos(cfg: TrainConfig, p: Paths, jc: JobConsole) -> None:
    """Scripted-expert demonstrations of the tasks that have fewer than demos_per_task."""
    from vlac.cloud.store.episodes import EpisodeStore

    have: dict[str, int] = {}
    if (p.store / "episodes").exists():
        for e in EpisodeStore(p.store, read_only=True).list_episodes():
            if e.get("source") == "demo" and e["outcome"]["success"]:
                have[e.get("task_id", "")] = have.get(e.get("task_id", ""), 0) + 1
    missing = [t for t in cfg.tasks if have.get(t, 0) < cfg.demos_per_task]
    if not missing:
        return
    from vlac.infra.demos import DemosCollectConfig
    from vlac.infra.demos import main as collect

    with jc.phase(f"demonstrations: {cfg.demos_per_task} per task of {missing}"):
        collect(DemosCollectConfig(tasks=missing, episodes=cfg.demos_per_task, noise=0.1,
                                   store_root=p.store, max_steps=cfg.max_steps))


def train_critic(cfg: TrainConfig, p: Paths, jc: JobConsole) -> Path:
    critic = cfg.critic or p.critic_dir / "critic.pt"
    if not critic.exists():
        from vlac.cloud.critic.train import CriticTrainConfig
        from vlac.cloud.critic.train import main as train

        with jc.phase(f"critic: {cfg.critic_steps} steps on {len(cfg.tasks)} tasks"):
            train(CriticTrainConfig(store_root=p.store, out=p.critic_dir, features=p.features,
                                    tasks=cfg.tasks, steps=cfg.critic_steps))
    return critic


def train_actor(cfg: TrainConfig, p: Paths, jc: JobConsole) -> Path:
    actor = cfg.actor or p.actor_dir / "actor.pt"
    if not actor.exists():
        from vlac.cloud.actor.pretrain import ActorPretrainConfig, train

        with jc.phase(f"imitation actor: {cfg.actor_demos_per_task} demos per task"):
            train(ActorPretrainConfig(store_root=p.store, out=p.actor_dir, features=p.features,
                                      tasks=cfg.tasks, demos_per_task=cfg.actor_demos_per_task,
                                      steps=cfg.actor_steps))
    return actor


def warn_if_int8_drifts(p: Paths, actor: Path, jc: JobConsole) -> None:
    from vlac.cloud.actor.export import int8_parity_warning
    from vlac.cloud.actor.model import TorchActor

    warning = int8_parity_warning(TorchActor.load(actor))
    if warning:
        jc.console.print(f"[yellow]warning:[/] {actor}: {warning}: delete {p.actor_dir} and "
                         f"{p.export} to pretrain it again, or run with --precision fp32")


def export_v0(cfg: TrainConfig, p: Paths, actor: Path, jc: JobConsole) -> Path:
    v0 = p.export / f"actor_{cfg.precision}.onnx"
    if not v0.exists():
        from vlac.cloud.actor.export import ActorExportConfig
        from vlac.cloud.actor.export import main as export

        with jc.phase("export of version 0 (fp32 and INT8)"):
            export(ActorExportConfig(actor=actor, out=p.export, store_root=p.store,
                                     tasks=cfg.tasks, calibration_frames=64, version=0))
    return v0


def publish_v0(cfg: TrainConfig, p: Paths, v0: Path) -> None:
    from vlac.cloud.fleet.publisher import Publisher

    pub = Publisher(publisher_config(p, precision=cfg.precision))
    if pub.fleet.latest_version() is None:
        pub.upload(v0, 0)
    pub.fleet.close()


def publisher_config(p: Paths, bind: str = "tcp://127.0.0.1:0", precision: str = "int8"):
    from vlac.cloud.fleet.publisher import PublisherConfig

    return PublisherConfig(fleet_dir=p.fleet, object_store=p.objects, signing_key=p.signing,
                           bind=bind, resend_s=2.0, precision=precision)

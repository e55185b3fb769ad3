"""`vlac actor pretrain`: imitation pretraining, then (optionally) evaluation in simulation."""

from __future__ import annotations

from vlac.cloud.actor.pretrain import ActorPretrainConfig, train
from vlac.cloud.critic.model import write_json
from vlac.infra.evaluate import ActorPolicy, evaluate


def pretrain_main(cfg: ActorPretrainConfig) -> dict:
    actor, summary = train(cfg)
    if cfg.eval_episodes:
        results = evaluate(lambda: ActorPolicy(actor), cfg.tasks, cfg.eval_episodes)
        summary["eval"] = results
        write_json(cfg.out / "pretrain_log.json", summary)
    return summary

"""`vlac edge synthetic`: synthetic episodes (deterministic image-like frames, no robot loop,
no policy) streamed through the real spool and sender, as fast as they go or at ``step_hz``.
A load generator for the transport: what `vlac stack --robot synthetic` and the transport
benchmark run; the frames are deterministic so tests can compare them. (A synthetic *robot*
that the edge process drives is ``vlac edge run --robot.type synthetic``.)"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from vlac.edge.transport.recorder import DEFAULT_CHUNK_STEPS, EpisodeRecorder
from vlac.edge.transport.sender import Sender, SenderConfig
from vlac.shared import wire
from vlac.shared.config import check, describe, opt
from vlac.shared.episode import synthetic_steps

log = logging.getLogger(__name__)


@dataclass
class SyntheticStreamConfig:
    sender: SenderConfig = field(default_factory=SenderConfig,
                                 metadata={"help": "Connection and spool settings."})
    episodes: int = opt(3, "Episodes to stream, then drain the spool and exit.")
    steps_per_episode: int = opt(64, "Steps in each episode.")
    chunk_steps: int = opt(DEFAULT_CHUNK_STEPS, "Steps per chunk on the wire.")
    task: str = opt("push the puck to the goal", "Task sentence recorded with each episode.")
    seed: int = opt(0, "Seed of the synthetic frames.")
    step_hz: float = opt(0.0, "Steps per second (0: as fast as possible).")
    drain_timeout_s: float = opt(120.0, "How long to wait for the last acknowledgements.")
    quiet: bool = opt(False, "Do not print the config and summary.")

    def __post_init__(self) -> None:
        check(self.episodes >= 0, "episodes", "must be >= 0")
        check(self.steps_per_episode >= 1, "steps_per_episode", "must be >= 1")
        check(self.chunk_steps >= 1, "chunk_steps", "must be >= 1")
        check(self.step_hz >= 0, "step_hz", "must be >= 0")


def main(cfg: SyntheticStreamConfig) -> dict:
    if not cfg.quiet:
        print(describe(cfg), flush=True)
    spec = wire.DEFAULT_SPEC
    spool = cfg.sender.make_spool()
    t0 = time.monotonic()
    with Sender(cfg.sender, spool, spec) as sender:
        for e in range(cfg.episodes):
            rec = EpisodeRecorder(spool, cfg.sender.robot_id, cfg.task, cfg.chunk_steps,
                                  image_codec=cfg.sender.image_codec)
            step = 0
            while step < cfg.steps_per_episode:
                n = min(cfg.chunk_steps, cfg.steps_per_episode - step)
                rec.add(synthetic_steps(spec, n, start_step=step, seed=cfg.seed * 1000 + e,
                                        t0=time.time()))
                step += n
                if cfg.step_hz:
                    time.sleep(n / cfg.step_hz)
                sender.raise_if_failed()
            rec.end(success=e % 2 == 0, reason="synthetic")
        drained = sender.wait_drained(cfg.drain_timeout_s)
    stats = {"robot_id": cfg.sender.robot_id, "episodes": cfg.episodes,
             "steps": cfg.episodes * cfg.steps_per_episode, "drained": drained,
             "seconds": time.monotonic() - t0, "spool_left": spool.depth,
             **vars(sender.stats)}
    if not cfg.quiet:
        print(f"robot {cfg.sender.robot_id}: {stats}", flush=True)
    if not drained:
        raise TimeoutError(f"{spool.depth} chunks still unacknowledged after "
                           f"{cfg.drain_timeout_s}s; they stay in {spool.root} and are sent "
                           "on the next start")
    return stats

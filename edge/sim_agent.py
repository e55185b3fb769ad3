"""A simulated robot on the edge: a Meta-World robot run by the agent loop, streaming its
episodes through the spool and sender. One process per robot; the local fleet starts several.

The policy is the exported actor under ONNX Runtime (``policy: onnx``, INT8 or fp32), or, for
tests and bootstrapping, Meta-World's scripted expert with action noise (``scripted``) or
uniform random tokens (``random``). The robot loop never waits on the network: chunks go to
the spool and the sender thread ships them. ``takeover_prob`` makes
the simulated operator take over now and then (human-guided exploration; those steps are
marked as interventions). SIGINT/SIGTERM finish the current step, end the episode, flush the
spool and exit cleanly.

With ``--updater.publisher-address`` set, the robot's weight updater (``vlac.edge.updater``)
runs beside the loop: new signed versions are verified and health-checked in the background
and swapped in between episodes; heartbeats carry the running version, the last update
error and how many announcements were refused or replayed. A restarted robot resumes its
last-known-good version.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vlac.edge.agent import run_episode
from vlac.edge.metaworld_robot import MetaWorldRobot, MetaWorldRobotConfig
from vlac.edge.operator import ScriptedExpert
from vlac.edge.policy import Policy, RandomPolicy, ScriptedPolicy
from vlac.edge.recorder import EpisodeRecorder
from vlac.edge.robot import Observation
from vlac.edge.sender import Sender, SenderConfig
from vlac.edge.updater import UpdaterConfig, WeightUpdater
from vlac.shared.config import check, describe, opt

log = logging.getLogger(__name__)


@dataclass
class SimAgentConfig:
    sender: SenderConfig = field(default_factory=SenderConfig,
                                 metadata={"help": "Connection and spool settings."})
    robot: MetaWorldRobotConfig = field(default_factory=MetaWorldRobotConfig,
                                        metadata={"help": "The simulated robot."})
    updater: UpdaterConfig = field(default_factory=UpdaterConfig,
                                   metadata={"help": "Weight updates from the publisher."})
    policy: Literal["onnx", "scripted", "random"] = opt(
        "scripted", "onnx: the exported actor (policy_path); scripted: Meta-World's expert "
        "with action noise; random: uniform tokens.")
    policy_path: Path | None = opt(None, "Exported actor (.onnx) for policy=onnx.")
    temperature: float = opt(1.0, "Sampling temperature of the onnx policy.")
    greedy: bool = opt(False, "Pick the most likely token instead of sampling (onnx).")
    policy_noise: float = opt(0.3, "Action noise of the scripted policy.")
    takeover_prob: float = opt(0.0, "Per-step chance that the simulated operator takes over.")
    takeover_steps: int = opt(20, "Steps an operator takeover lasts.")
    on_stall: Literal["none", "guide", "return"] = opt(
        "none", "When the critic's progress stalls or regresses: guide = the (simulated) "
        "operator takes over for guide_steps (human-guided exploration); return = go back "
        "to the episode's most promising state and explore again (return and explore).")
    guide_steps: int = opt(0, "Steps the operator keeps control after a stall (0: to the "
                           "end of the episode, as in HG-DAgger).")
    critic_address: str = opt("", "Critic service (`vlac critic serve`) for the stall "
                              "trigger; asked without ever blocking the robot.")
    stall_check_every: int = opt(10, "Steps between progress checks.")
    stall_patience: int = opt(2, "Checks without progress that count as a stall.")
    stall_min_gain: float = opt(0.05, "Progress gain over the episode's best that counts as "
                                "progress at a check.")
    sync_every: int = opt(0, "After this many episodes on one policy version, wait for a "
                          "newer one before going on (on-policy batches for a learner that is "
                          "slower than the fleet; 0: never wait).")
    sync_timeout_s: float = opt(600.0, "Longest wait for a newer version (then go on).")
    episodes: int = opt(3, "Episodes to run, then flush the spool and exit (0: only flush).")
    chunk_steps: int = opt(16, "Steps per chunk on the wire.")
    step_hz: float = opt(0.0, "Control rate (0: as fast as the simulator goes).")
    drain_timeout_s: float = opt(120.0, "How long to wait for the last acknowledgements.")
    quiet: bool = opt(False, "Do not print the config and the summary.")

    def __post_init__(self) -> None:
        check(self.episodes >= 0, "episodes", "must be >= 0")
        check(self.chunk_steps >= 1, "chunk_steps", "must be >= 1")
        check(0 <= self.takeover_prob <= 1, "takeover_prob", "must be in [0, 1]")
        check(self.guide_steps >= 0, "guide_steps", "must be >= 0 (0: to the episode's end)")
        check(self.stall_patience >= 1, "stall_patience", "must be >= 1")
        check(self.policy_noise >= 0, "policy_noise", "must be >= 0")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(self.on_stall == "none" or bool(self.critic_address), "critic_address",
              "on_stall needs the critic service's address (vlac critic serve)")
        if self.policy == "onnx":
            check(self.policy_path is not None and Path(self.policy_path).exists(),
                  "policy_path", f"{self.policy_path} is not an exported actor; run "
                  "`vlac actor export` and pass its .onnx file")


def load_onnx(cfg: SimAgentConfig, path: Path, noise: np.random.Generator | None = None
              ) -> Policy:
    """``noise``: the robot's one sampling stream, handed from version to version, so a
    weight swap does not replay the same Gumbel noise from the start (each new version's
    rollouts would otherwise all begin with the same exploration)."""
    from vlac.edge.runtime import OnnxPolicy

    policy = OnnxPolicy(path, temperature=cfg.temperature, greedy=cfg.greedy,
                        seed=cfg.robot.seed)
    if noise is not None:
        policy.rng = noise
    return policy


def make_policy(cfg: SimAgentConfig, spec, noise: np.random.Generator | None = None
                ) -> Policy:
    if cfg.policy == "onnx":
        return load_onnx(cfg, cfg.policy_path, noise)
    if cfg.policy == "random":
        return RandomPolicy(spec, seed=cfg.robot.seed)
    return ScriptedPolicy(cfg.robot.task, spec, noise=cfg.policy_noise, seed=cfg.robot.seed)


class _Watched(Policy):
    """Hands the first observation to the updater (its health-check sample)."""

    def __init__(self, inner: Policy, updater: WeightUpdater) -> None:
        self.inner, self.updater, self.version = inner, updater, inner.version
        self._seen = False

    def act(self, obs: Observation):
        if not self._seen:
            self.updater.observe(obs)
            self._seen = True
        return self.inner.act(obs)


def main(cfg: SimAgentConfig) -> dict:
    if not cfg.quiet:
        print(describe(cfg), flush=True)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    spool = cfg.sender.make_spool()
    results = []
    t0 = time.monotonic()
    current: list[Policy] = []
    versions: list[int] = []
    updater: WeightUpdater | None = None
    with MetaWorldRobot(cfg.robot) as robot, \
            Sender(cfg.sender, spool, robot.spec,
                   policy_version=lambda: current[0].version if current else -1,
                   update_error=lambda: updater.error if updater else "",
                   announcements=lambda: (updater.announcements_refused,
                                          updater.announcements_replayed)
                   if updater else (0, 0)) as sender:
        noise = np.random.default_rng(cfg.robot.seed)
        current.append(make_policy(cfg, robot.spec, noise))
        if cfg.updater.publisher_address:
            updater = WeightUpdater(cfg.updater, cfg.sender.robot_id,
                                    lambda p: load_onnx(cfg, p, noise),
                                    running_version=current[0].version
                                    if cfg.policy == "onnx" else -1)
            restored = updater.restore()
            if restored is not None:
                log.info("resuming last-known-good version %d", restored.version)
                current[0] = restored
            updater.start()
        operator = None
        if cfg.takeover_prob > 0:
            operator = ScriptedExpert(cfg.robot.task, takeover_prob=cfg.takeover_prob,
                                      takeover_steps=cfg.takeover_steps, seed=cfg.robot.seed)
        progress = None
        if cfg.on_stall != "none":
            from vlac.edge.operator import StallWatch
            from vlac.edge.progress import CriticProgress

            progress = CriticProgress(cfg.critic_address, cfg.robot.camera)
            guide = operator or ScriptedExpert(cfg.robot.task, seed=cfg.robot.seed)
            operator = StallWatch(progress, on_stall=cfg.on_stall, guide=guide,
                                  check_every=cfg.stall_check_every,
                                  patience=cfg.stall_patience,
                                  min_gain=cfg.stall_min_gain,
                                  guide_steps=cfg.guide_steps,
                                  max_triggers=1)
        start_from = None
        returns = 0
        on_version = 0
        for _ in range(cfg.episodes):
            if stop.is_set():
                break
            if updater is not None and cfg.sync_every and on_version >= cfg.sync_every:
                deadline = time.monotonic() + cfg.sync_timeout_s
                while not stop.is_set() and time.monotonic() < deadline:
                    fresh = updater.take()
                    if fresh is not None:
                        current[0] = fresh
                        break
                    time.sleep(0.2)
                on_version = 0

            def sink(task: str) -> EpisodeRecorder:
                return EpisodeRecorder(spool, cfg.sender.robot_id, task, cfg.chunk_steps,
                                       task_id=cfg.robot.task)

            if updater is not None:
                fresh = updater.take()  # swap only between episodes
                if fresh is not None:
                    current[0] = fresh
                    on_version = 0
            on_version += 1
            policy = current[0] if updater is None else _Watched(current[0], updater)
            versions.append(current[0].version)
            res = run_episode(robot, policy, sink, operator=operator, step_hz=cfg.step_hz,
                              stop=stop.is_set, start_from=start_from)
            # return and explore: the next attempt starts from the most promising state
            start_from = res.snapshot if res.reason == "returned" else None
            returns += res.reason == "returned"
            results.append(res)
            sender.raise_if_failed()
        drained = sender.wait_drained(cfg.drain_timeout_s)
        if progress is not None:
            progress.close()
        if updater is not None:
            updater.stop()
            updater.join(5)
    summary = {"robot_id": cfg.sender.robot_id, "task": cfg.robot.task,
               "episodes": len(results), "successes": sum(r.success for r in results),
               "steps": sum(r.steps for r in results),
               "interventions": sum(r.interventions for r in results),
               "returns": returns,
               "stall_triggers": getattr(operator, "triggers", 0),
               "seconds": time.monotonic() - t0, "drained": drained,
               "policy_version": current[0].version if current else -1,
               "versions": versions,
               "spool_left": spool.depth}
    if not cfg.quiet:
        print(f"robot {cfg.sender.robot_id}: {summary}", flush=True)
    if not drained:
        raise TimeoutError(f"{spool.depth} chunks still unacknowledged after "
                           f"{cfg.drain_timeout_s}s; they stay in {spool.root} and are sent "
                           "on the next start")
    return summary

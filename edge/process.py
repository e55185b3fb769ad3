"""The edge process (`vlac edge run`): one robot of any registered type, run by the agent loop,
streaming its episodes through the spool and sender. One process per robot; the local fleet
starts several.

The robot is ``--robot.type NAME`` (default ``metaworld``; ``synthetic`` is built in too, and
other packages register theirs: vlac.edge.robots.registry) with that type's settings as the
other ``--robot.*`` flags. The policy is the exported actor under ONNX Runtime (``policy:
onnx``, INT8 or fp32), or, for tests and bootstrapping, the robot's scripted expert with
action noise (``scripted``) or uniform random tokens (``random``). The robot loop never waits
on the network: chunks go to the spool and the sender thread ships them. The ``operator``
section (``--operator.*``, ``vlac.shared.hitl.OperatorConfig``) makes the simulated operator
take over at random or when the critic's progress stalls (those steps are marked as
interventions), or return to a promising saved state. SIGINT/SIGTERM finish the current
step, end the episode, flush the spool and exit cleanly.

Features that need more than ``connect/observe/act/reset/close`` (the scripted expert for
``--policy scripted``, ``--operator.takeover-prob`` and ``--operator.on-stall guide``;
snapshots for ``--operator.on-stall return``) are checked against the robot type when the
config is built, and a missing one is refused by name before the robot connects.

With ``--updater.publisher-address`` set, the robot's weight updater (``vlac.edge.updater``)
runs beside the loop: new signed versions are verified and health-checked in the background
and swapped in between episodes; heartbeats carry the running version, the last update
error and how many announcements were refused or replayed. A restarted robot resumes its
last-known-good version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from vlac.edge.agent import EpisodeResult, run_episode
from vlac.edge.hitl.operator import Operator, ScriptedExpert, StallWatch
from vlac.edge.policy import Policy, RandomPolicy, ScriptedPolicy
from vlac.edge.robots import registry
from vlac.edge.robots.metaworld import MetaWorldRobotConfig
from vlac.edge.robots.robot import Observation, Robot, RobotConfig
from vlac.edge.transport.recorder import DEFAULT_CHUNK_STEPS, EpisodeRecorder
from vlac.edge.transport.sender import Sender, SenderConfig
from vlac.edge.updater import UpdaterConfig, WeightUpdater
from vlac.shared.config import ConfigError, check, describe, opt
from vlac.shared.hitl import OperatorConfig
from vlac.shared.signals import stop_event
from vlac.shared.wire import RobotSpec

log = logging.getLogger(__name__)

# what each optional robot feature is called in errors, and what to use without it
_FEATURES = {"expert": ("scripted expert (Robot.expert_action)",
                        "use --policy random or --policy onnx, --operator.takeover-prob 0 "
                        "and no --operator.on-stall guide"),
             "snapshots": ("snapshots (Robot.save_state / restore_state)",
                           "use --operator.on-stall guide or none")}


@dataclass
class EdgeAgentConfig:
    sender: SenderConfig = field(default_factory=SenderConfig,
                                 metadata={"help": "Connection and spool settings."})
    robot: RobotConfig = field(default_factory=MetaWorldRobotConfig,
                               metadata={"help": "The robot: --robot.type and its settings."})
    updater: UpdaterConfig = field(default_factory=UpdaterConfig,
                                   metadata={"help": "Weight updates from the publisher."})
    policy: Literal["onnx", "scripted", "random"] = opt(
        "scripted", "onnx: the exported actor (policy_path); scripted: the robot's scripted "
        "expert with action noise; random: uniform tokens.")
    policy_path: Path | None = opt(None, "Exported actor (.onnx) for policy=onnx.")
    temperature: float = opt(1.0, "Sampling temperature of the onnx policy.")
    greedy: bool = opt(False, "Pick the most likely token instead of sampling (onnx).")
    policy_noise: float = opt(0.3, "Action noise of the scripted policy.")
    operator: OperatorConfig = field(default_factory=OperatorConfig, metadata={
        "help": "The (simulated) operator: random takeovers and the stall response."})
    critic_address: str = opt("", "Critic service (`vlac critic serve`) for the stall "
                              "trigger; asked without ever blocking the robot.")
    sync_every: int = opt(0, "After this many episodes on one policy version, wait for a "
                          "newer one before going on (on-policy batches for a learner that is "
                          "slower than the fleet; 0: never wait).")
    sync_timeout_s: float = opt(600.0, "Longest wait for a newer version (then go on).")
    episodes: int = opt(3, "Episodes to run, then flush the spool and exit (0: only flush).")
    chunk_steps: int = opt(DEFAULT_CHUNK_STEPS, "Steps per chunk on the wire.")
    step_hz: float = opt(0.0, "Control rate (0: as fast as the robot goes).")
    drain_timeout_s: float = opt(120.0, "How long to wait for the last acknowledgements.")
    quiet: bool = opt(False, "Do not print the config and the summary.")

    def __post_init__(self) -> None:
        self.robot = registry.robot_config(self.robot)
        check(self.episodes >= 0, "episodes", "must be >= 0")
        check(self.chunk_steps >= 1, "chunk_steps", "must be >= 1")
        check(self.policy_noise >= 0, "policy_noise", "must be >= 0")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(self.operator.on_stall == "none" or bool(self.critic_address), "critic_address",
              "operator.on_stall needs the critic service's address (vlac critic serve)")
        if self.policy == "onnx":
            check(self.policy_path is not None and Path(self.policy_path).exists(),
                  "policy_path", f"{self.policy_path} is not an exported actor; run "
                  "`vlac actor export` and pass its .onnx file")
        self._check_robot_features()

    def needs(self) -> dict[str, str]:
        """Optional robot features these settings use -> the setting that uses it."""
        out: dict[str, str] = {}
        if self.policy == "scripted":
            out.setdefault("expert", "policy=scripted")
        if self.operator.takeover_prob > 0:
            out.setdefault("expert", "operator.takeover_prob > 0 (the simulated operator)")
        if self.operator.on_stall == "guide":
            out.setdefault("expert", "operator.on_stall=guide (the scripted expert guides)")
        if self.operator.on_stall == "return":
            out["snapshots"] = "operator.on_stall=return"
        return out

    def _check_robot_features(self) -> None:
        name = registry.type_name(self.robot)
        have = registry.features(registry.robot_class(name))
        for feature, setting in self.needs().items():
            if feature not in have:
                what, instead = _FEATURES[feature]
                raise ConfigError(f"config field `robot.type`: robot type {name!r} has no "
                                  f"{what}, which {setting} needs; {instead}")


@dataclass
class EdgeSpecConfig:
    robot: RobotConfig = field(default_factory=MetaWorldRobotConfig,
                               metadata={"help": "The robot: --robot.type and its settings."})
    out: Path | None = opt(None, "Write the spec to this YAML file (for `vlac ingest serve "
                           "--spec-file`); default: print it.")

    def __post_init__(self) -> None:
        self.robot = registry.robot_config(self.robot)


def spec_main(cfg: EdgeSpecConfig) -> RobotSpec:
    """`vlac edge spec`: the robot's spec (cameras, proprio and action sizes), which ingest
    must expect (its default is Meta-World's); the robot is built but never connected."""
    import msgspec
    import yaml

    spec = registry.make_robot(cfg.robot).spec
    text = yaml.safe_dump(msgspec.to_builtins(spec), sort_keys=False)
    if cfg.out is None:
        print(text, end="", flush=True)
    else:
        Path(cfg.out).write_text(text)
        print(f"wrote the {registry.type_name(cfg.robot)} robot's spec to {cfg.out}")
    return spec


def load_onnx(cfg: EdgeAgentConfig, path: Path, noise: np.random.Generator | None = None
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


def make_policy(cfg: EdgeAgentConfig, robot: Robot,
                noise: np.random.Generator | None = None) -> Policy:
    if cfg.policy == "onnx":
        return load_onnx(cfg, cfg.policy_path, noise)
    if cfg.policy == "random":
        return RandomPolicy(robot.spec, seed=cfg.robot.seed)
    return ScriptedPolicy(robot.expert_action, robot.spec, noise=cfg.policy_noise,
                          seed=cfg.robot.seed)


def make_operator(cfg: EdgeAgentConfig, robot: Robot):
    """The simulated operator and the stall watch, as the operator section asks: (operator or
    None, the critic progress client to close, or None)."""
    op, seed = cfg.operator, cfg.robot.seed
    operator: Operator | None = None
    if op.takeover_prob > 0:
        operator = ScriptedExpert(robot.expert_action, takeover_prob=op.takeover_prob,
                                  takeover_steps=op.takeover_steps, seed=seed)
    if op.on_stall == "none":
        return operator, None
    from vlac.edge.hitl.progress import CriticProgress

    progress = CriticProgress(cfg.critic_address, next(iter(robot.spec.cameras)))
    guide = operator
    if guide is None and "expert" in registry.features(type(robot)):
        guide = ScriptedExpert(robot.expert_action, seed=seed)
    return stall_watch(op, progress, guide), progress


def stall_watch(op: OperatorConfig, progress, guide: ScriptedExpert | None) -> StallWatch:
    """The stall trigger the operator section describes (at most one stall per episode):
    ``progress(first_obs, obs)`` is the critic's progress, ``guide`` who takes over."""
    return StallWatch(progress, on_stall=op.on_stall, guide=guide,
                      check_every=op.stall_check_every, patience=op.stall_patience,
                      min_gain=op.stall_min_gain, guide_steps=op.guide_steps, max_triggers=1)


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


class _Policies:
    """The running policy and the updater that replaces it, only ever between episodes."""

    def __init__(self, cfg: EdgeAgentConfig) -> None:
        self.cfg = cfg
        self.current: Policy | None = None
        self.updater: WeightUpdater | None = None
        self.on_version = 0

    # what the sender's heartbeats report
    def version(self) -> int:
        return self.current.version if self.current is not None else -1

    def error(self) -> str:
        return self.updater.error if self.updater is not None else ""

    def announcements(self) -> tuple[int, int]:
        u = self.updater
        return (u.announcements_refused, u.announcements_replayed) if u else (0, 0)

    def start(self, robot: Robot) -> None:
        cfg = self.cfg
        noise = np.random.default_rng(cfg.robot.seed)
        self.current = make_policy(cfg, robot, noise)
        if not cfg.updater.publisher_address:
            return
        self.updater = WeightUpdater(cfg.updater, cfg.sender.robot_id,
                                     lambda p: load_onnx(cfg, p, noise),
                                     running_version=self.current.version
                                     if cfg.policy == "onnx" else -1)
        restored = self.updater.restore()
        if restored is not None:
            log.info("resuming last-known-good version %d", restored.version)
            self.current = restored
        self.updater.start()

    def for_next_episode(self, stop: threading.Event) -> Policy:
        """Waits for a newer version after ``sync_every`` episodes on one, then swaps in
        whatever the updater has ready."""
        cfg, updater = self.cfg, self.updater
        if updater is None:
            return self.current  # type: ignore[return-value]
        if cfg.sync_every and self.on_version >= cfg.sync_every:
            deadline = time.monotonic() + cfg.sync_timeout_s
            while not stop.is_set() and time.monotonic() < deadline:
                fresh = updater.take()
                if fresh is not None:
                    self.current = fresh
                    break
                time.sleep(0.2)
            self.on_version = 0
        fresh = updater.take()
        if fresh is not None:
            self.current = fresh
            self.on_version = 0
        self.on_version += 1
        return _Watched(self.current, updater)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.updater is not None:
            self.updater.stop()
            self.updater.join(5)



def main(cfg: EdgeAgentConfig) -> dict:
    robot_type = registry.type_name(cfg.robot)
    if not cfg.quiet:
        print(f"{describe(cfg)}\n  robot type: {robot_type}", flush=True)
    stop = stop_event()
    spool = cfg.sender.make_spool()
    results: list[EpisodeResult] = []
    versions: list[int] = []
    t0 = time.monotonic()
    policies = _Policies(cfg)
    with registry.make_robot(cfg.robot) as robot, \
            Sender(cfg.sender, spool, robot.spec, policy_version=policies.version,
                   update_error=policies.error,
                   announcements=policies.announcements) as sender:
        policies.start(robot)
        operator, progress = make_operator(cfg, robot)

        def sink(task: str) -> EpisodeRecorder:
            return EpisodeRecorder(spool, cfg.sender.robot_id, task, cfg.chunk_steps,
                                   task_id=robot.task_id, image_codec=cfg.sender.image_codec)

        start_from = None
        for _ in range(cfg.episodes):
            if stop.is_set():
                break
            policy = policies.for_next_episode(stop)
            versions.append(policy.version)
            res = run_episode(robot, policy, sink, operator=operator, step_hz=cfg.step_hz,
                              stop=stop.is_set, start_from=start_from)
            # return and explore: the next attempt starts from the most promising state
            start_from = res.snapshot if res.reason == "returned" else None
            results.append(res)
            sender.raise_if_failed()
        drained = sender.wait_drained(cfg.drain_timeout_s)
        if progress is not None:
            progress.close()
        policies.stop()
    summary = {"robot_id": cfg.sender.robot_id, "robot_type": robot_type,
               "task": robot.task_id, "episodes": len(results),
               "successes": sum(r.success for r in results),
               "steps": sum(r.steps for r in results),
               "interventions": sum(r.interventions for r in results),
               "returns": sum(r.reason == "returned" for r in results),
               "stall_triggers": getattr(operator, "triggers", 0),
               "seconds": time.monotonic() - t0, "drained": drained,
               "policy_version": policies.version(), "versions": versions,
               "spool_left": spool.depth}
    if not cfg.quiet:
        print(f"robot {cfg.sender.robot_id}: {summary}", flush=True)
    if not drained:
        raise TimeoutError(f"{spool.depth} chunks still unacknowledged after "
                           f"{cfg.drain_timeout_s}s; they stay in {spool.root} and are sent "
                           "on the next start")
    return summary

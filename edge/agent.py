"""The edge agent's episode loop: observe, ask the operator, else the policy, act, record.

Recording never touches the network (the sink writes to the spool; the sender thread does the
rest). Operator commands: TakeOver steps are recorded with ``intervention=True`` and the
operator's action; RequestReset ends the episode (outcome reason ``operator_reset``);
ReturnTo ends the episode (reason ``returned``) and the next one starts from the saved state
(return-and-explore), since a jump inside one recorded trajectory would break its returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from vlac.edge.hitl.operator import Operator, RequestReset, ReturnTo, TakeOver
from vlac.edge.policy import Policy
from vlac.edge.robots.robot import Observation, Robot, Snapshot
from vlac.shared.episode import StepColumns
from vlac.shared.tokenizer import ActionTokenizer


class EpisodeSink(Protocol):
    """Where steps go: the spool recorder on a robot, a store writer for demonstrations."""

    def add(self, steps: StepColumns) -> None: ...

    def end(self, success: bool, reason: str = "") -> object: ...


@dataclass
class EpisodeResult:
    task: str
    steps: int
    success: bool
    reason: str
    interventions: int
    snapshot: Snapshot | None = None
    """The latest saved state (for return-and-explore), if the robot supports it."""


def _one_step(obs: Observation, action: np.ndarray, tokens: np.ndarray, logprob: float,
              version: int, intervention: bool, ts: float) -> StepColumns:
    return StepColumns(
        images={k: v[None] for k, v in obs.images.items()},
        proprio=obs.proprio[None].astype(np.float32),
        action=np.asarray(action, np.float32)[None],
        action_tokens=np.asarray(tokens, np.int32)[None],
        logprob=np.array([logprob], np.float32),
        policy_version=np.array([version], np.int64),
        intervention=np.array([intervention]),
        timestamp=np.array([ts], np.float64),
    )


def run_episode(robot: Robot, policy: Policy, sink_for_task, *,
                operator: Operator | None = None, start_from: Snapshot | None = None,
                snapshot_every: int = 0, step_hz: float = 0.0,
                stop=lambda: False) -> EpisodeResult:
    """Run one episode and record it into ``sink_for_task(task)``.

    ``start_from`` restores a saved state instead of resetting. ``snapshot_every`` saves the
    robot state every k steps (the latest is returned for return-and-explore). ``stop()``
    ending early finishes the current step and ends the episode (reason ``stopped``).
    """
    obs = robot.restore_state(start_from) if start_from is not None else robot.reset()
    tok = ActionTokenizer(robot.spec.action_low, robot.spec.action_high,
                          robot.spec.action_bins)
    if operator is not None:
        operator.on_episode_start(obs.task)
    sink = sink_for_task(obs.task)
    latest = start_from
    steps = interventions = 0
    success, reason = False, ""
    period = 1.0 / step_hz if step_hz else 0.0
    next_tick = time.monotonic()
    while True:
        cmd = operator.poll(obs) if operator is not None else None
        if isinstance(cmd, (RequestReset, ReturnTo)) and steps == 0:
            cmd = None  # nothing recorded yet: an episode needs at least one step
        if isinstance(cmd, RequestReset):
            reason = "operator_reset"
            break
        if isinstance(cmd, ReturnTo):
            reason = "returned"
            break
        if isinstance(cmd, TakeOver):
            tokens = tok.encode(cmd.action)
            action, logprob, intervention = tok.decode(tokens), 0.0, True
            interventions += 1
        else:
            ps = policy.act(obs)
            action, tokens, logprob, intervention = ps.action, ps.tokens, ps.logprob, False
        ts = time.time()
        result = robot.act(action)
        sink.add(_one_step(obs, action, tokens, logprob, policy.version, intervention, ts))
        steps += 1
        obs = result.observation
        if (snapshot_every and steps % snapshot_every == 0) or \
                (operator is not None and operator.wants_snapshot()):
            try:
                latest = robot.save_state()
            except NotImplementedError:
                snapshot_every = 0
        if result.done:
            success = result.success
            reason = "success" if success else "timeout"
            break
        if stop():
            reason = "stopped"
            break
        if period:
            next_tick += period
            time.sleep(max(0.0, next_tick - time.monotonic()))
    sink.end(success, reason)
    return EpisodeResult(obs.task, steps, success, reason, interventions, latest)

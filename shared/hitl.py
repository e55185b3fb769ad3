"""Human in the loop and behaviour cloning: one set of settings for every process.

- ``OperatorConfig``: what a robot's operator (a person, or the scripted expert standing in
  for one) does: random takeovers, and what happens when the critic's progress stalls. The
  edge process takes it as its ``operator`` section (``vlac edge run --operator.*``).
- ``BCConfig``: the behaviour-cloning term of the learner's updates and what feeds it
  (demonstrations, operator takeovers, replayed successes). The learner takes it as its
  ``bc`` section (``vlac learner run --bc.*``).
- ``HitlConfig``: the protocols ``vlac train`` and the learning benchmark switch on or off
  (demonstration replay, guided exploration, return and explore), around the two sections;
  the switches are applied to the sections when it is built, so ``hitl.operator`` goes to
  every robot and ``hitl.bc`` to the learner as they are.
- ``unassisted``: the one rule for "the policy succeeded on its own".

No torch: robots and the cloud both import this. docs/training.md says why the defaults are
what they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from vlac.shared.config import check, opt

OnStall = Literal["none", "guide", "return"]


@dataclass
class OperatorConfig:
    takeover_prob: float = opt(0.0, "Per-step chance that the (simulated) operator takes "
                               "over at random.")
    takeover_steps: int = opt(15, "Steps a random takeover lasts.")
    on_stall: OnStall = opt(
        "none", "When the critic's progress stalls or regresses: guide = the operator takes "
        "over for guide_steps (human-guided exploration); return = the episode ends and the "
        "next one starts from its most promising saved state (return and explore); none = "
        "nothing.")
    guide_steps: int = opt(0, "Steps the operator keeps control after a stall (0: to the "
                           "end of the episode, as in HG-DAgger).")
    stall_check_every: int = opt(10, "Steps between progress checks (each asks the critic "
                                 "service without waiting for its answer).")
    stall_patience: int = opt(2, "Progress checks without a new best that count as a stall.")
    stall_min_gain: float = opt(0.05, "Progress gain over the episode's best that counts as "
                                "a new best.")

    def __post_init__(self) -> None:
        check(0 <= self.takeover_prob <= 1, "operator.takeover_prob", "must be in [0, 1]")
        check(self.takeover_steps >= 1, "operator.takeover_steps", "must be >= 1")
        check(self.on_stall in ("none", "guide", "return"), "operator.on_stall",
              "use none, guide or return")
        check(self.guide_steps >= 0, "operator.guide_steps",
              "must be >= 0 (0: to the episode's end)")
        check(self.stall_check_every >= 1, "operator.stall_check_every", "must be >= 1")
        check(self.stall_patience >= 1, "operator.stall_patience", "must be >= 1")

    @property
    def takes_over(self) -> bool:
        """Whether this operator ever drives the robot (its steps are interventions)."""
        return self.takeover_prob > 0 or self.on_stall == "guide"


@dataclass
class BCConfig:
    coef: float = opt(1.0, "Weight of behaviour cloning on takeovers, demonstrations and "
                      "replayed successes in each update (0: off).")
    batch_size: int = opt(32, "Behaviour-cloning samples per minibatch.")
    steps: int | None = opt(None, "Extra behaviour-cloning-only optimizer steps after each "
                            "update's RL epochs, at lr (default: 100, or 0 when coef is 0; 0: "
                            "BC only rides along the RL minibatches, at the algorithm's "
                            "learning rate x coef).")
    lr: float = opt(3e-4, "Learning rate of the extra behaviour-cloning steps.")
    demo_episodes: int = opt(20, "Stored demonstrations replayed in the BC term (offline "
                             "demonstration replay; 0: none).")
    takeover_replay: int = opt(200, "Operator takeovers of the fleet's last N episodes that "
                               "had one stay in the BC pool (HG-DAgger's aggregated data; 0: "
                               "only the current update's takeovers).")
    success_replay: int = opt(0, "The fleet's last N successful episodes join the BC term "
                              "(self-imitation; needs coef > 0; 0: off).")

    def __post_init__(self) -> None:
        check(self.coef >= 0, "bc.coef", "must be >= 0 (0 turns behaviour cloning off)")
        if self.steps is None:
            self.steps = 100 if self.coef > 0 else 0
        check(self.batch_size >= 1, "bc.batch_size", "must be >= 1")
        check(self.steps >= 0, "bc.steps", "must be >= 0 (0: off)")
        check(not (self.steps and self.coef == 0), "bc.steps",
              "needs --bc.coef > 0 (it only adds behaviour-cloning steps)")
        check(self.lr > 0, "bc.lr", "must be > 0")
        check(self.demo_episodes >= 0, "bc.demo_episodes", "must be >= 0")
        check(self.takeover_replay >= 0, "bc.takeover_replay", "must be >= 0 (0: off)")
        check(self.success_replay >= 0, "bc.success_replay", "must be >= 0 (0: off)")
        check(not (self.success_replay and self.coef == 0), "bc.success_replay",
              "replayed successes are behaviour-cloned: set --bc.coef > 0 too")


@dataclass
class HitlConfig:
    demo_replay: bool = opt(True, "Offline demonstration replay: behaviour cloning on up to "
                            "bc.demo_episodes stored demonstrations in every update (off: "
                            "bc.demo_episodes becomes 0).")
    guide_on_stall: bool = opt(True, "Human-guided exploration: the (simulated) operator "
                               "takes over when the critic's progress stalls (operator.on_stall "
                               "becomes guide); its steps are demonstration data, never RL "
                               "samples.")
    return_on_stall: bool = opt(False, "Return and explore: a stalled episode restarts from "
                                "its most promising saved state (operator.on_stall becomes "
                                "return).")
    operator: OperatorConfig = field(default_factory=OperatorConfig, metadata={
        "help": "What the robots' operator does (its on_stall follows guide_on_stall and "
                "return_on_stall)."})
    bc: BCConfig = field(default_factory=BCConfig, metadata={
        "help": "The learner's behaviour-cloning term and what feeds it."})

    def __post_init__(self) -> None:
        check(not (self.guide_on_stall and self.return_on_stall), "return_on_stall",
              "choose one stall response: guided exploration is on by default, so add "
              "--no-hitl.guide-on-stall to --hitl.return-on-stall")
        stall = "guide" if self.guide_on_stall else "return" if self.return_on_stall else "none"
        check(self.operator.on_stall in ("none", stall), "hitl.operator.on_stall",
              f"is {self.operator.on_stall!r}, but the switches ask for {stall!r}: choose the "
              "stall response with --hitl.guide-on-stall / --hitl.return-on-stall")
        # the sections hold what the robots and the learner get, so they pass through as-is
        self.operator = dataclasses.replace(self.operator, on_stall=stall)
        if not self.demo_replay:
            self.bc = dataclasses.replace(self.bc, demo_episodes=0)
        check(not self.demo_replay or self.bc.demo_episodes > 0, "hitl.bc.demo_episodes",
              "demonstration replay needs > 0 (or switch it off: --no-hitl.demo-replay)")
        check(self.bc.coef > 0 or not self.cloned, "hitl.bc.coef",
              "demonstration replay, takeovers and replayed successes are only used by "
              "behaviour cloning: give it a weight > 0, or switch them off")

    @property
    def cloned(self) -> bool:
        """Whether anything feeds the behaviour-cloning term."""
        return (self.demo_replay or self.guide_on_stall or self.operator.takeover_prob > 0
                or self.bc.success_replay > 0)

    @property
    def helped(self) -> bool:
        """Whether the operator ever helps an episode along (takeovers or restarts)."""
        return self.operator.on_stall != "none" or self.operator.takeover_prob > 0


def unassisted(success: bool, operator_steps: int, restarted: bool) -> bool:
    """Whether an episode counts as a success of the policy alone: it succeeded, no step of
    it was the operator's, and it did not start from a saved state (return and explore)."""
    return bool(success) and not operator_steps and not restarted

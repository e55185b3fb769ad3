"""The learning benchmark's variants: {algorithms} x {rewards} x {help}, and the control.

``ALGO-REWARD``: algorithm ALGO (a name of ``vlac.cloud.learner.algorithms``) learning from
REWARD (``critic``: the critic's progress; ``sparse``: the success reward alone; ``oracle``:
Meta-World's shaped reward, a reference), no help; ``ALGO-REWARD-hitl``: the same with the
human-in-the-loop help (demonstration replay, guided exploration on stall); ``frozen``: the
starting policy, never updated.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlac.cloud.learner.algorithms.base import DEFAULT_ALGORITHM

# the algorithm the benchmark's defaults and its key line are about: the one the product
# runs by default (`vlac learner run`, `vlac train`), chosen by this benchmark's results
BEST_ALGORITHM = DEFAULT_ALGORITHM
REWARDS = ("critic", "sparse", "oracle")
FROZEN = "frozen"
HELP = "-hitl"


@dataclass(frozen=True)
class Variant:
    name: str
    algorithm: str  # the frozen control builds a learner too (never updated): ppo's
    reward: str
    helped: bool = False

    @property
    def frozen(self) -> bool:
        return self.name == FROZEN


def parse_variant(name: str) -> Variant:
    """``ALGO-REWARD``, ``ALGO-REWARD-hitl`` or ``frozen``; a ValueError otherwise."""
    if name == FROZEN:
        return Variant(FROZEN, "ppo", "sparse")
    helped = name.endswith(HELP)
    algo, _, reward = name.removesuffix(HELP).rpartition("-")
    if not algo or reward not in REWARDS:
        raise ValueError(f"variant {name!r}: use ALGO-REWARD, ALGO-REWARD-hitl or frozen, "
                         f"REWARD one of {', '.join(REWARDS)}")
    return Variant(name, algo, reward, helped)


def variant_names(algorithms: list[str], rewards: list[str], hitl: list[str],
                  frozen: bool = True) -> list[str]:
    """Every ALGO-REWARD pair, then the help variants of the ``hitl`` pairs, then the
    control; ``BEST`` in a hitl pair stands for the first of ``algorithms``."""
    names = [f"{a}-{r}" for a in algorithms for r in rewards]
    for pair in hitl:
        algo, _, reward = pair.rpartition("-")
        if algo == "BEST":
            algo = algorithms[0]
        if parse_variant(f"{algo}-{reward}").helped:
            raise ValueError(f"--hitl {pair!r}: give ALGO-REWARD pairs")
        names.append(f"{algo}-{reward}{HELP}")
    names += [FROZEN] if frozen else []
    if len(set(names)) != len(names):
        raise ValueError(f"a variant is named twice: {', '.join(names)}")
    for n in names:
        parse_variant(n)
    return names


def best_algorithm(variants: list[str], algorithms: list[str] | None = None) -> str:
    """The algorithm the key line is about: the first of ``algorithms`` (default: the
    variants' own, in order) that has an ALGO-critic variant; else the first of them
    (``BEST_ALGORITHM`` when there is none)."""
    if algorithms is None:
        algorithms = [parse_variant(v).algorithm for v in variants if v != FROZEN]
    return next((a for a in algorithms if f"{a}-critic" in variants),
                algorithms[0] if algorithms else BEST_ALGORITHM)


def variant_order(variants, algorithms: list[str] | None = None) -> list[str]:
    """Table order: by algorithm (``algorithms`` first, in their order), reward, help; the
    control last."""
    algorithms = algorithms or [BEST_ALGORITHM]

    def key(name: str) -> tuple:
        if name == FROZEN:
            return (2, 0, "", 0, False)
        v = parse_variant(name)
        known = v.algorithm in algorithms
        return (0 if known else 1, algorithms.index(v.algorithm) if known else 0,
                v.algorithm, REWARDS.index(v.reward), v.helped)

    return sorted(set(variants), key=key)

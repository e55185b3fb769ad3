"""The seam between the learner process and an RL algorithm (as LeRobot's
``rl/algorithms/base.py``).

The process (``vlac.cloud.learner.process``) owns the store polling, the rewards, the
behaviour-cloning pools, checkpoints, distribution and publishing. An algorithm owns the
optimisation:

- ``update(batch) -> stats``: train on one update's episodes (``UpdateBatch``); the stats
  say whether the weights changed (``learned``: a new policy version);
- ``engine``: the DeepSpeed engine around the policy; the process checkpoints it (weights and
  optimizer) and publishes ``policy``'s weights;
- ``state_dict()`` / ``load_state_dict()``: whatever else it learns or counts (a Q-function,
  target networks, counters), saved inside the learner's checkpoint and handed back on resume;
- its config section, ``LearnerConfig.algorithm`` (``--algorithm.*``), whose ``name`` picks
  it from the registry below.

A new algorithm subclasses ``Algorithm``, decorates itself with ``@register("name")`` and is
imported in ``algorithms/__init__.py``; it creates its engines with ``ctx.make_engine`` (the
learner's ZeRO stage and DeepSpeed config), the one place they are made.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from vlac.shared.config import ConfigError, selected_section

if TYPE_CHECKING:
    import torch

    from vlac.cloud.learner.config import BCConfig
    from vlac.cloud.learner.episodes import EpisodeData
    from vlac.cloud.learner.replay import StepPool


@dataclass
class UpdateBatch:
    """One update's input: the episodes with their rewards, the behaviour-cloning pool
    (takeovers, demonstrations, replayed successes) and the learner's current version (the
    version lag of each step is measured against it)."""

    episodes: list[EpisodeData]
    bc: StepPool
    version: int
    demos: list[EpisodeData] = field(default_factory=list)
    """The replayed demonstrations with their rewards, for an algorithm whose
    ``wants_demo_episodes`` is True (empty otherwise: PPO only clones them, from ``bc``)."""


class AlgorithmConfig:
    """Base of every algorithm's config section (``LearnerConfig.algorithm``): a dataclass
    whose first field is ``name``. The CLI resolves ``--algorithm.name NAME`` (or ``algorithm:
    {name: NAME}`` in YAML) before parsing, and NAME's config class gives the other
    ``--algorithm.*`` flags."""

    selector: ClassVar[str] = "name"
    name: str = ""

    @classmethod
    def config_for(cls, name: str | None) -> type:
        return algorithm_class(name or DEFAULT_ALGORITHM).config_cls

    @classmethod
    def type_help(cls) -> str:
        return (f"The RL algorithm (default: {DEFAULT_ALGORITHM}; registered: "
                f"{', '.join(sorted(ALGORITHMS))}); its settings are the other "
                "--algorithm.* flags (`--algorithm.name NAME -h` lists them).")


DEFAULT_ALGORITHM = "ppo"  # of `vlac learner run` and `vlac train`


def default_algorithm_config() -> AlgorithmConfig:
    """The default algorithm's config section with its own defaults."""
    return algorithm_class(DEFAULT_ALGORITHM).config_cls()


def algorithm_config(value: Any) -> AlgorithmConfig:
    """The ``algorithm`` section as its algorithm's config: a mapping (``name`` plus that
    algorithm's fields, from YAML or flags) is checked by that algorithm's config class."""
    cfg = selected_section(value, "algorithm", AlgorithmConfig, "name", DEFAULT_ALGORITHM,
                           lambda name: algorithm_class(name).config_cls, "algorithm",
                           keep_selector=True)
    algorithm_class(cfg.name)  # a ConfigError naming the known ones
    return cfg


@dataclass(frozen=True)
class Context:
    """What the learner process gives an algorithm besides its config section."""

    bc: BCConfig  # the behaviour-cloning term's weight, batch size, extra steps
    seed: int  # of minibatch shuffling and BC sampling (with the version added per update)
    world: int  # processes training together (each takes its share of every minibatch)
    make_engine: Callable[..., Any]  # (model, *, lr, micro_batch, grad_clip) -> engine


class Algorithm(ABC):
    """An RL algorithm the learner process drives, made as ``cls(cfg, model, ctx)`` (its
    config section, the policy to train, a ``Context``); see the module docstring."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    wants_demo_episodes: ClassVar[bool] = False
    """True: ``UpdateBatch.demos`` carries the replayed demonstrations with rewards."""
    engine: Any

    @property
    def policy(self) -> torch.nn.Module:
        """The policy being trained (what the learner checkpoints and publishes)."""
        return self.engine.module

    @abstractmethod
    def update(self, batch: UpdateBatch) -> dict[str, Any]:
        """Train on one batch. Returns metrics, with ``learned`` True when the weights
        changed."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """State beyond the engine's weights and optimizer (saved in the checkpoint)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what ``state_dict`` returned (on resume)."""


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(name: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Class decorator: make an algorithm available as ``--algorithm.name NAME``."""

    def add(cls: type[Algorithm]) -> type[Algorithm]:
        if name in ALGORITHMS:
            raise ValueError(f"an algorithm named {name!r} is already registered")
        cls.name = name
        ALGORITHMS[name] = cls
        return cls

    return add


def algorithm_class(name: str) -> type[Algorithm]:
    """The registered algorithm ``name``; an error naming the known ones otherwise."""
    if name not in ALGORITHMS:
        raise ConfigError(f"config field `algorithm.name`: unknown algorithm {name!r}; "
                          f"known: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def make_algorithm(cfg: Any, model: torch.nn.Module, ctx: Context) -> Algorithm:
    """The algorithm ``cfg.name`` (its config section ``cfg``), training ``model``."""
    cls = algorithm_class(cfg.name)
    if not isinstance(cfg, cls.config_cls):
        raise ConfigError(f"config field `algorithm`: algorithm {cfg.name!r} takes a "
                          f"{cls.config_cls.__name__} section, not {type(cfg).__name__}")
    return cls(cfg, model, ctx)

"""The algorithm registry: algorithms by name, an unknown one refused in words."""

import dataclasses

import pytest

from vlac.cloud.learner.algorithms import (
    ALGORITHMS,
    PPO,
    Context,
    PPOConfig,
    algorithm_class,
    make_algorithm,
    register,
)
from vlac.cloud.learner.config import BCConfig, LearnerConfig
from vlac.infra.cli import main as cli
from vlac.shared.config import ConfigError


def test_the_registry_refuses_an_unknown_algorithm_naming_the_known_ones(capsys):
    assert algorithm_class("ppo") is PPO and ALGORITHMS["ppo"].name == "ppo"
    with pytest.raises(ConfigError, match=r"`algorithm.name`: unknown algorithm 'sac'; "
                                          r"known: parl, ppo"):
        algorithm_class("sac")
    with pytest.raises(ConfigError, match=r"`algorithm.name`.*known: parl, ppo"):
        LearnerConfig(algorithm=PPOConfig(name="sac"))
    assert cli(["learner", "run", "--algorithm.name", "sac"]) == 2
    assert "known: parl, ppo" in capsys.readouterr().err
    with pytest.raises(ValueError, match="already registered"):
        register("ppo")(PPO)


def test_an_algorithm_takes_its_own_config_section():
    @dataclasses.dataclass
    class OtherConfig:
        name: str = "ppo"

    ctx = Context(bc=BCConfig(), seed=0, world=1, make_engine=lambda *a, **k: None)
    with pytest.raises(ConfigError, match="takes a PPOConfig section, not OtherConfig"):
        make_algorithm(OtherConfig(), None, ctx)

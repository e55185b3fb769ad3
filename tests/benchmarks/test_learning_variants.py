"""The learning benchmark's variants ({algorithms} x {rewards} x {help}, and the control) from
its flags, and the jobs they become (with ppo: the other algorithms may not exist)."""

import learning
import pytest
from learning_run import algorithm_config
from learning_variants import (
    BEST_ALGORITHM,
    best_algorithm,
    parse_variant,
    variant_names,
    variant_order,
)

from vlac.cloud.learner.algorithms import PPOConfig


def variants(*flags):
    return learning.variants_of(learning.parser().parse_args(list(flags)))


def test_the_default_run_and_the_flags():
    assert variants() == [f"{BEST_ALGORITHM}-critic", f"{BEST_ALGORITHM}-sparse",
                          f"{BEST_ALGORITHM}-critic-hitl", "frozen"]
    assert variants("--algorithms", "ppo", "--rewards", "oracle", "--hitl", "none",
                    "--no-frozen") == ["ppo-oracle"]
    assert variants("--algorithms", "ppo,x", "--rewards", "critic,sparse", "--hitl",
                    "BEST-sparse,x-critic") == [
        "ppo-critic", "ppo-sparse", "x-critic", "x-sparse", "ppo-sparse-hitl",
        "x-critic-hitl", "frozen"]
    with pytest.raises(ValueError, match="--rewards dense"):
        variants("--rewards", "critic,dense")
    with pytest.raises(ValueError, match="give ALGO-REWARD pairs"):
        variants("--hitl", "ppo-critic-hitl")
    with pytest.raises(ValueError, match="named twice"):
        variants("--algorithms", "ppo,ppo")


def test_parse_variant():
    v = parse_variant("ppo-oracle-hitl")
    assert (v.algorithm, v.reward, v.helped, v.frozen) == ("ppo", "oracle", True, False)
    assert parse_variant("frozen").frozen and not parse_variant("frozen").helped
    for bad in ("critic", "ppo-dense", "-critic", "hitl"):
        with pytest.raises(ValueError, match="use ALGO-REWARD"):
            parse_variant(bad)


def test_order_and_the_best_algorithm():
    names = ["frozen", "ppo-sparse", "parl-critic-hitl", "ppo-critic", "parl-critic"]
    assert variant_order(names, ["parl", "ppo"]) == [
        "parl-critic", "parl-critic-hitl", "ppo-critic", "ppo-sparse", "frozen"]
    assert best_algorithm(names, ["ppo", "parl"]) == "ppo"
    assert best_algorithm(["ppo-sparse", "frozen"], ["ppo"]) == "ppo"  # no ppo-critic: the first
    assert best_algorithm(["frozen"], []) == BEST_ALGORITHM
    assert variant_names(["ppo"], ["critic"], ["BEST-critic"], frozen=False) == [
        "ppo-critic", "ppo-critic-hitl"]


def test_jobs_switch_help_on_only_for_help_variants():
    a = learning.parser().parse_args(["--algorithms", "ppo", "--lr", "1e-4",
                                      "--algorithm.advantage", "gae", "--temperature", "0.5"])
    helped, alone = learning.job(a, "ppo-critic-hitl", 0), learning.job(a, "ppo-critic", 0)
    assert helped["hitl"].demo_replay and helped["hitl"].operator.on_stall == "guide"
    assert not alone["hitl"].demo_replay and alone["hitl"].operator.on_stall == "none"
    assert alone["hitl"].bc.demo_episodes == 0 and alone["work"].endswith("/ppo-critic-s0")
    assert alone["overrides"] == {"lr": 1e-4, "advantage": "gae", "temperature": 0.5}
    cfg = algorithm_config("ppo", {**alone["overrides"], "not_a_ppo_field": 1})
    assert isinstance(cfg, PPOConfig)
    assert (cfg.lr, cfg.advantage, cfg.temperature) == (1e-4, "gae", 0.5)
    # left out: the algorithm's own defaults
    cfg = algorithm_config("ppo", learning.job(learning.parser().parse_args([]), "ppo-sparse",
                                               1)["overrides"])
    assert cfg == PPOConfig()


def test_a_setting_no_learning_variant_has_gets_a_note(capsys):
    learning.check_algorithms(["ppo-critic", "frozen"], {"lr": 1e-4, "advantage": "gae"})
    assert capsys.readouterr().out == ""
    learning.check_algorithms(["frozen"], {"lr": 1e-4})  # the control never updates
    assert "--algorithm.lr is a setting of none" in capsys.readouterr().out

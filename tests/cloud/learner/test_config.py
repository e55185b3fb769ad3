"""LearnerConfig: nested sections from Python, YAML-shaped mappings and CLI flags; every bad
value names its field (with its section) and the fix."""

import dataclasses
import re

import pytest

from vlac.cloud.learner.algorithms import ALGORITHMS
from vlac.cloud.learner.config import LearnerConfig
from vlac.infra.cli import main as cli
from vlac.shared.config import ConfigError, from_dict


def test_bad_config_values_name_the_field(tmp_path, capsys):
    for data, field in [({"episodes_per_update": 0}, "episodes_per_update"),
                        ({"algorithm": {"clip": 0.0}}, "algorithm.clip"),
                        ({"rewards": {"done_threshold": 1.5}}, "rewards.done_threshold"),
                        ({"zero_stage": 3}, "zero_stage"),
                        ({"algorithm": {"gamma": 1.1}}, "algorithm.gamma"),
                        ({"rewards": {"critic": str(tmp_path / "missing.pt")}},
                         "rewards.critic"),
                        ({"ds_config": str(tmp_path / "missing.json")}, "ds_config")]:
        with pytest.raises(ConfigError, match=f"`{re.escape(field)}`"):
            from_dict(LearnerConfig, data)
    with pytest.raises(ConfigError, match="rewards: config field `mode`"):
        from_dict(LearnerConfig, {"rewards": {"mode": "dense"}})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['reward'\].*'rewards'"):
        from_dict(LearnerConfig, {"reward": "sparse"})  # a flat field of before the sections
    assert cli(["learner", "run", "--algorithm.epochs", "0"]) == 2
    assert "`algorithm.epochs`" in capsys.readouterr().err


def test_sections_come_from_nested_mappings_and_dotted_flags(tmp_path, monkeypatch):
    cfg = from_dict(LearnerConfig, {"algorithm": {"clip": 0.1, "advantage": "gae"},
                                    "rewards": {"mode": "sparse"}, "bc": {"coef": 0.0},
                                    "publish": {"every": 3}, "episodes_per_update": 4})
    assert (cfg.algorithm.clip, cfg.algorithm.advantage, cfg.rewards.mode, cfg.bc.coef,
            cfg.publish.every, cfg.episodes_per_update) == (0.1, "gae", "sparse", 0.0, 3, 4)
    assert cfg.algorithm.lr == 3e-5 and cfg.bc.lr == 3e-4  # the rest keeps its defaults
    seen = {}
    monkeypatch.setattr("vlac.cloud.learner.process.main", lambda c: seen.setdefault("cfg", c))
    assert cli(["learner", "run", "--algorithm.clip", "0.3", "--bc.steps", "5",
                "--bc.coef", "1", "--rewards.mode", "sparse", "--publish.enabled",
                "--publish.publisher.precision", "fp32"]) == 0
    got = seen["cfg"]
    assert (got.algorithm.clip, got.bc.steps, got.rewards.mode, got.publish.enabled,
            got.publish.publisher.precision) == (0.3, 5, "sparse", True, "fp32")


def _fields(cls, prefix=""):
    for f in dataclasses.fields(cls):
        tp = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if tp is not None and not isinstance(tp, type):  # a factory function: its class
            tp = type(tp())
        if dataclasses.is_dataclass(tp) and tp.__module__.startswith("vlac."):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f.metadata.get("help", "")


def test_every_field_has_a_help_that_says_what_it_does():
    fields = dict(_fields(LearnerConfig))
    assert {"algorithm.clip", "rewards.mode", "bc.coef", "publish.every"} <= set(fields)
    for cls in {a.config_cls for a in ALGORITHMS.values()}:  # every algorithm's section
        fields.update(_fields(cls, "algorithm."))
    assert "algorithm.critic_steps" in fields
    for name, text in fields.items():
        assert text, f"{name} has no help"
        assert not re.search(r"#\d|issue \d", text), f"{name}'s help cites the tracker"

"""Robot types by name: built in, registered from outside through the entry-point group, and
the errors for an unknown, broken, duplicated or malformed registration."""

import pytest

from tests.edge.conftest import make_distribution
from vlac.edge.robots import (
    MetaWorldRobot,
    MetaWorldRobotConfig,
    SyntheticRobot,
    SyntheticRobotConfig,
    registry,
)
from vlac.shared.config import ConfigError


def test_builtin_types_and_their_features():
    assert registry.names()[:2] == ["metaworld", "synthetic"]
    assert registry.robot_class() is MetaWorldRobot  # the default type
    assert registry.robot_class("synthetic") is SyntheticRobot
    assert registry.features(MetaWorldRobot) == {"snapshots", "expert"}
    assert registry.features(SyntheticRobot) == {"snapshots", "expert"}
    assert registry.type_name(SyntheticRobotConfig()) == "synthetic"


def test_a_mapping_becomes_its_types_config():
    assert registry.robot_config({}) == MetaWorldRobotConfig()
    cfg = registry.robot_config({"type": "synthetic", "max_steps": 7})
    assert cfg == SyntheticRobotConfig(max_steps=7)
    with pytest.raises(ConfigError, match=r"robot \(type synthetic\): unknown field\(s\)"):
        registry.robot_config({"type": "synthetic", "task_name": "x"})
    with pytest.raises(ConfigError, match="expected a mapping"):
        registry.robot_config("synthetic")


def test_an_unknown_type_names_the_known_ones_and_how_to_register():
    with pytest.raises(ConfigError) as e:
        registry.robot_class("ufo")
    msg = str(e.value)
    assert "'ufo' is not a known robot type; known: metaworld, synthetic" in msg
    assert '[project.entry-points."vlac.robots"]' in msg and "docs/robots.md" in msg


def test_an_outside_package_registers_a_type(outside_robot):
    assert "toy-arm" in registry.names()
    cls = registry.robot_class("toy-arm")
    assert cls.__module__ == "my_lab_arm" and registry.features(cls) == set()
    assert "toy-arm (my_lab_arm:ToyArm from my-lab-arm 0.1)" in registry.describe_types()
    cfg = registry.robot_config({"type": "toy-arm", "steps": 3})
    assert type(cfg) is cls.config_class and cfg.steps == 3
    assert registry.type_name(cfg) == "toy-arm"
    robot = registry.make_robot(cfg)
    with robot:
        assert robot.reset().images["wrist"].shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="`steps`: must be >= 1"):
        registry.robot_config({"type": "toy-arm", "steps": 0})


def test_broken_duplicated_and_malformed_registrations_are_refused(tmp_path, monkeypatch):
    site = tmp_path / "site"
    make_distribution(site, "lab-a", {"broken-arm": "lab_a_broken:Arm", "twice": "lab_a:Arm",
                                      "not-a-robot": "lab_a:Arm", "metaworld": "lab_a:Arm",
                                      "no-config": "lab_a:NoConfig"},
                      {"lab_a_broken": 'raise ImportError("the arm SDK is missing")\n',
                       "lab_a": "from vlac.edge.robots import Robot\nArm = object\n"
                                "class NoConfig(Robot):\n    pass\n"})
    make_distribution(site, "lab-b", {"twice": "lab_b:Arm"}, {"lab_b": "Arm = object\n"})
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ConfigError, match=r"'broken-arm' \(lab_a_broken:Arm from lab-a 0.1\) "
                                          "cannot be loaded: ImportError: the arm SDK"):
        registry.robot_class("broken-arm")
    with pytest.raises(ConfigError, match="'twice' is registered more than once"):
        registry.robot_class("twice")
    with pytest.raises(ConfigError, match=r"not a subclass of vlac\.edge\.robots\.Robot"):
        registry.robot_class("not-a-robot")
    with pytest.raises(ConfigError, match="config_class must be a dataclass subclassing"):
        registry.robot_class("no-config")
    with pytest.raises(ConfigError, match="'metaworld' is built in, and lab_a:Arm from lab-a"):
        registry.robot_class("metaworld")
    # a broken registration does not hide the working ones
    assert registry.type_name(SyntheticRobotConfig()) == "synthetic"

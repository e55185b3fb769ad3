"""A robot type from outside this repository: a tiny installed distribution (a package and
its dist-info with an entry_points.txt) in a temporary folder on sys.path, registering
``toy-arm`` under the ``vlac.robots`` group, as a lab's own package would."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

TOY_ARM = '''
"""A lab's robot adapter: a 2-D arm that only the robot interface's required parts cover."""
from dataclasses import dataclass

import numpy as np

from vlac.edge.robots import Observation, Robot, RobotConfig, StepResult
from vlac.shared.config import check, opt
from vlac.shared.wire import RobotSpec


@dataclass
class ToyArmConfig(RobotConfig):
    port: str = opt("/dev/null", "Where the arm is.")
    steps: int = opt(10, "Steps per episode.")
    seed: int = opt(0, "Seed of the frames.")

    def __post_init__(self):
        check(self.steps >= 1, "steps", "must be >= 1")


class ToyArm(Robot):
    config_class = ToyArmConfig
    task_id = "toy-wave"

    def __init__(self, cfg):
        self.cfg = cfg
        self.spec = RobotSpec(cameras={"wrist": (32, 32, 3)}, proprio_dim=4, action_dim=4,
                              action_low=(-1.0,) * 4, action_high=(1.0,) * 4)
        self.connected = False
        self._t = 0

    def connect(self):
        self.connected = True

    def close(self):
        self.connected = False

    def observe(self):
        img = np.full((32, 32, 3), (self._t * 9 + self.cfg.seed) % 256, np.uint8)
        return Observation({"wrist": img}, np.full(4, self._t, np.float32), "wave hello")

    def reset(self):
        self._t = 0
        return self.observe()

    def act(self, action):
        assert self.connected
        self._t += 1
        done = self._t >= self.cfg.steps
        return StepResult(self.observe(), success=done and self.cfg.seed % 2 == 0, done=done)
'''

@dataclass
class OutsideDist:
    site: Path
    """The folder to put on sys.path (or PYTHONPATH)."""


def make_distribution(site: Path, name: str, entry_points: dict[str, str],
                      modules: dict[str, str]) -> None:
    """An installed distribution as pip leaves it: modules plus NAME-0.1.dist-info."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[vlac.robots]\n{lines}")
    for mod, text in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(text))


@pytest.fixture
def outside_robot(tmp_path, monkeypatch) -> OutsideDist:
    """``toy-arm`` (my_lab_arm:ToyArm) registered by the distribution ``my-lab-arm``."""
    site = tmp_path / "site"
    make_distribution(site, "my-lab-arm", {"toy-arm": "my_lab_arm:ToyArm"},
                      {"my_lab_arm": TOY_ARM})
    monkeypatch.syspath_prepend(str(site))
    yield OutsideDist(site)
    import sys

    sys.modules.pop("my_lab_arm", None)

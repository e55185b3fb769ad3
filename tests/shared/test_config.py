from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vlac.shared.config import ConfigError, check, dump_yaml, load_yaml, opt


@dataclass
class Inner:
    rate: float = opt(1.0, "A rate.")


@dataclass
class Outer:
    name: str = opt("a", "A name.")
    path: Path = opt(Path("x"), "A path.")
    tags: list[str] = opt(["t"], "Tags.")
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        check(self.name != "bad", "name", "must not be 'bad'; pick another")


def test_yaml_round_trip(tmp_path):
    cfg = Outer(name="b", path=Path("/p"), tags=["x", "y"], inner=Inner(rate=3.0))
    f = tmp_path / "c.yaml"
    f.write_text(dump_yaml(cfg))
    assert load_yaml(Outer, f) == cfg


def test_ints_become_floats_and_paths_paths(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("path: /a/b\ninner:\n  rate: 2\n")
    cfg = load_yaml(Outer, f)
    assert cfg.path == Path("/a/b") and cfg.inner.rate == 2.0


def test_unknown_field_lists_known_ones(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("nmae: x\n")
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['nmae'\].*known fields"):
        load_yaml(Outer, f)


def test_post_init_error_names_field(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: bad\n")
    with pytest.raises(ConfigError, match="`name`: must not be 'bad'"):
        load_yaml(Outer, f)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(Outer, tmp_path / "nope.yaml")
    f = tmp_path / "c.yaml"
    f.write_text("a: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(Outer, f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(Outer, f)

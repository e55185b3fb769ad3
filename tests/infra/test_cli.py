import subprocess
import sys

import pytest

from tests.helpers import make_keyring
from vlac.cloud.store.episodes import EpisodeStore
from vlac.infra.cli import COMMANDS, main
from vlac.shared.episode import synthetic_steps
from vlac.shared.wire import DEFAULT_SPEC, Outcome


def vlac(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "vlac.infra.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_keys_generate_is_idempotent(tmp_path, capsys):
    assert main(["keys", "generate", "--dir", str(tmp_path), "--robots", "r1,r2"]) == 0
    pub = (tmp_path / "robots/r1.key").read_text()
    assert (tmp_path / "server/ingest.key_secret").exists()
    assert main(["keys", "generate", "--dir", str(tmp_path), "--robots", "r1"]) == 0
    assert (tmp_path / "robots/r1.key").read_text() == pub
    assert main(["keys", "generate", "--dir", str(tmp_path), "--robots", "r1", "--force"]) == 0
    assert (tmp_path / "robots/r1.key").read_text() != pub
    assert "allow-list" in capsys.readouterr().out


def test_bad_flag_values_name_the_field(tmp_path, capsys):
    assert main(["keys", "generate", "--dir", str(tmp_path), "--robots", "a/b"]) == 2
    assert "'a/b' is not a valid id" in capsys.readouterr().err
    assert main(["ingest", "serve", "--bind", "localhost:1"]) == 2
    assert "`bind`" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("robots: 2\nrobts: 3\n")
    assert main(["stack", "--config", str(cfg)]) == 2
    assert "unknown field(s) ['robts']" in capsys.readouterr().err
    cfg.write_text("robot: ufo\n")
    assert main(["stack", "--config", str(cfg)]) == 2
    assert "`robot`: 'ufo' is not one of ['metaworld', 'synthetic']" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_command_prints_its_help(path, capsys):
    # help strings are argparse %-format strings: a bare "%" in one ("the ~30% knob") made
    # `vlac train --help` crash
    with pytest.raises(SystemExit) as exc:
        main([*path, "--help"])
    assert exc.value.code == 0
    assert f"usage: vlac {' '.join(path)}" in capsys.readouterr().out


def test_store_ls_and_show(tmp_path, capsys):
    store = EpisodeStore(tmp_path)
    store.write_chunk("robot-0", "ep-7", 0, "press the button", synthetic_steps(DEFAULT_SPEC, 6),
                      Outcome(success=True, n_chunks=1, n_steps=6))
    assert main(["store", "ls", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "robot-0/ep-7" in out and "press the button" in out and "1 episodes, 6 steps" in out
    assert main(["store", "show", "--root", str(tmp_path), "--episode", "robot-0/ep-7",
                 "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "6 steps" in out and "(6, 128, 128, 3)" in out


def test_yaml_config_with_flag_override(tmp_path, capsys):
    kr = make_keyring(tmp_path)
    cfg = tmp_path / "ingest.yaml"
    cfg.write_text(f"bind: tcp://127.0.0.1:0\nstore_root: {tmp_path / 'store'}\n"
                   f"server_secret_key: {kr.server_secret}\n"
                   f"allowed_keys_dir: {kr.allowed}\nduration_s: 30\n")
    assert main(["ingest", "serve", "--config", str(cfg), "--duration-s", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "duration_s: 0.3" in out and "ingest stopped" in out


def test_edge_commands_never_import_torch_or_cloud():
    code = ("import sys\nfrom vlac.infra.cli import main\n"
            "try:\n    main(['edge', 'synthetic', '--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('vlac.cloud')]\n"
            "assert not bad, bad\nprint('clean')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr


@pytest.mark.timeout(240)
def test_stack_main_job_smoke(tmp_path):
    r = vlac("stack", "--workdir", str(tmp_path), "--robots", "2", "--episodes-per-robot", "1",
             "--tasks", "reach-v3,button-press-v3", "--max-steps", "30", "--chunk-steps", "8",
             timeout=200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    eps = EpisodeStore(tmp_path / "store").list_episodes()
    assert sorted(e["task_id"] for e in eps) == ["button-press-v3", "reach-v3"]
    assert "success by task" in r.stdout


def test_stack_synthetic_smoke(tmp_path):
    r = vlac("stack", "--robot", "synthetic", "--workdir", str(tmp_path), "--robots", "2",
             "--episodes-per-robot", "2", "--steps-per-episode", "20", "--chunk-steps", "8")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "4 episodes, 80 steps, 2 robots" in r.stdout


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_info_shows_only_with_verbose(verbose):
    code = ("import logging, sys\nfrom vlac.infra.cli import setup_logging\n"
            "setup_logging(sys.argv[1] == 'v')\n"
            "logging.getLogger('onnx_ir.passes').info('third-party info')\n"
            "logging.getLogger('onnx_ir.passes').warning('third-party warning')\n"
            "logging.getLogger('vlac.cloud.x').info('own info')\n"
            "logging.getLogger('vlac.cloud.x').debug('own debug')\n")
    r = subprocess.run([sys.executable, "-c", code, "v" if verbose else "-"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "own info" in r.stderr and "third-party warning" in r.stderr
    assert ("third-party info" in r.stderr) == verbose == ("own debug" in r.stderr)

"""`vlac edge run` stops cleanly on SIGTERM: it finishes the step, ends the episode, flushes
the spool into ingest and exits 0, with nothing left behind."""

import signal
import time

import pytest

from tests.helpers import ThreadIngest, cli_process, ingest_config, wait_for

pytestmark = pytest.mark.filterwarnings("ignore")


def test_sigterm_flushes_and_exits_cleanly(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        log = tmp_path / "robot.log"
        proc = cli_process(
            "edge", "run", "--sender.robot-id", "robot-0",
            "--sender.ingest-address", ingest.address,
            "--sender.robot-secret-key", str(keyring.robot_secret("robot-0")),
            "--sender.server-public-key", str(keyring.server_public),
            "--sender.spool-dir", str(tmp_path / "spool"),
            "--robot.task", "push-v3", "--robot.max-steps", "150",
            "--policy", "random", "--episodes", "50", "--step-hz", "50",
            "--chunk-steps", "8", "--quiet", log=log)
        wait_for(lambda: len(ingest.store.incomplete()) > 0 or ingest.store.list_episodes(),
                 60, "the robot to start streaming")
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-2000:]
        assert not list((tmp_path / "spool").glob("0*.chunk"))  # spool flushed
        eps = ingest.store.list_episodes()
        assert eps and eps[-1]["outcome"]["reason"] == "stopped"
        assert ingest.store.incomplete() == []  # the cut episode was closed, not abandoned

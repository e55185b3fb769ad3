import msgspec
import numpy as np
import pytest

from tests.helpers import ThreadIngest, ingest_config, sender_config, wait_for
from vlac.edge.transport.recorder import EpisodeRecorder
from vlac.edge.transport.sender import Sender, SenderError
from vlac.shared import wire
from vlac.shared.config import ConfigError
from vlac.shared.episode import make_chunk, synthetic_steps

SPEC = wire.DEFAULT_SPEC


def test_config_mismatch_is_fatal_with_the_reason(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        other = msgspec.structs.replace(SPEC, action_bins=128)
        cfg = sender_config(keyring, "robot-0", ingest.address, tmp_path / "spool")
        spool = cfg.make_spool()
        spool.put("ep", 0, b"never sent")
        with Sender(cfg, spool, other) as s, \
                pytest.raises(SenderError, match=r"action_bins: expected 256, got 128"):
            s.wait_drained(10)
        assert spool.depth == 1  # nothing is lost: it waits for a fixed robot


def test_invalid_chunk_is_set_aside_and_the_rest_flows(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        cfg = sender_config(keyring, "robot-0", ingest.address, tmp_path / "spool")
        spool = cfg.make_spool()
        bad = synthetic_steps(SPEC, 2)
        bad.proprio[0, 0] = np.nan
        spool.put("ep-bad", 0, wire.encode(make_chunk("robot-0", "ep-bad", 0, "t", bad)))
        rec = EpisodeRecorder(spool, "robot-0", "t", chunk_steps=2)
        rec.add(synthetic_steps(SPEC, 5))
        rec.end(True)
        with Sender(cfg, spool, SPEC) as s:
            assert s.wait_drained(20)
        assert s.stats.rejected == 1
        [kept] = spool.rejected()
        assert "not_finite (steps.proprio)" in kept.with_suffix(".reason.txt").read_text()
        assert len(ingest.store.list_episodes()) == 1


def test_unknown_key_is_reported_and_nothing_is_lost(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        cfg = sender_config(keyring, "intruder", ingest.address, tmp_path / "spool")
        spool = cfg.make_spool()
        spool.put("ep", 0, b"x")
        with Sender(cfg, spool, SPEC) as s:
            wait_for(lambda: "refused this robot's key" in s.stats.last_error, 10,
                     "auth refusal")
            assert "allow-list" in s.stats.last_error
        assert spool.depth == 1 and not s.connected


def test_wrong_server_key_is_reported(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        cfg = sender_config(keyring, "robot-0", ingest.address, tmp_path / "spool",
                            handshake_timeout_s=0.3)
        cfg.server_public_key = keyring.root / "robots/robot-1.key"  # not ingest's key
        spool = cfg.make_spool()
        with Sender(cfg, spool, SPEC) as s:
            wait_for(lambda: s.stats.last_error != "", 10, "an error note")
            assert "server" in s.stats.last_error
            assert not s.connected


def test_heartbeat_reports_version_and_spool_depth(tmp_path, keyring):
    with ThreadIngest(ingest_config(keyring, tmp_path / "store")) as ingest:
        cfg = sender_config(keyring, "robot-3", ingest.address, tmp_path / "spool",
                            heartbeat_s=0.1)
        with Sender(cfg, cfg.make_spool(), SPEC, policy_version=lambda: 42):
            wait_for(lambda: ingest.robots.get("robot-3") is not None
                     and ingest.robots["robot-3"].policy_version == 42, 10, "heartbeat")


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="`robot_id`: 'bad/id' is not a valid id"):
        sender_config_robot("bad/id", tmp_path)
    with pytest.raises(ConfigError, match="`ingest_address`"):
        from vlac.edge.transport.sender import SenderConfig
        SenderConfig(ingest_address="localhost:5555")


def sender_config_robot(robot, tmp_path):
    from vlac.edge.transport.sender import SenderConfig
    return SenderConfig(robot_id=robot, spool_dir=tmp_path)

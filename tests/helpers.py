"""Shared test helpers: keys, an ingest in a thread or a process, raw CURVE clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq

from vlac.cloud.ingest.service import Ingest, IngestConfig
from vlac.edge.transport.sender import SenderConfig
from vlac.shared import keys, wire
from vlac.shared.episode import StepColumns
from vlac.shared.net import free_port  # noqa: F401 (re-exported)

ROBOTS = ["robot-0", "robot-1", "robot-2", "robot-3"]


@dataclass
class Keyring:
    root: Path
    outsider_root: Path

    @property
    def server_secret(self) -> Path:
        return self.root / "server/ingest.key_secret"

    @property
    def server_public(self) -> Path:
        return self.root / "server/ingest.key"

    @property
    def allowed(self) -> Path:
        return self.root / "robots"

    def robot_secret(self, robot: str) -> Path:
        if robot == "intruder":
            return self.outsider_root / "robots/intruder.key_secret"
        return self.root / f"robots/{robot}.key_secret"


def make_keyring(tmp: Path) -> Keyring:
    keys.generate(tmp / "keys", ROBOTS)
    keys.generate(tmp / "outsider", ["intruder"])
    return Keyring(tmp / "keys", tmp / "outsider")


def ingest_config(kr: Keyring, store: Path, bind: str = "tcp://127.0.0.1:0") -> IngestConfig:
    return IngestConfig(bind=bind, store_root=store, server_secret_key=kr.server_secret,
                        allowed_keys_dir=kr.allowed, status_every_s=0)


class ThreadIngest:
    """An Ingest serving in a background thread of the test process."""

    def __init__(self, cfg: IngestConfig) -> None:
        self.ingest = Ingest(cfg)
        self.thread = threading.Thread(target=self.ingest.serve, daemon=True)

    def __enter__(self) -> Ingest:
        self.thread.start()
        self.ingest.wait_ready()
        return self.ingest

    def __exit__(self, *exc: object) -> None:
        self.ingest.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()


def sender_config(kr: Keyring, robot: str, address: str, spool: Path, **kw) -> SenderConfig:
    return SenderConfig(robot_id=robot, ingest_address=address,
                        robot_secret_key=kr.robot_secret(robot),
                        server_public_key=kr.server_public, spool_dir=spool, **kw)


def cli_process(*args: str, log: Path) -> subprocess.Popen:
    """`vlac ARGS` as a separate OS process (so it can be SIGKILLed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vlac.infra.cli", *args],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(15)


class RawClient:
    """A DEALER speaking the wire protocol by hand, to send what a real sender never would."""

    def __init__(self, kr: Keyring, robot: str, address: str, *, curve: bool = True,
                 ctx: zmq.Context | None = None) -> None:
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        # a refused peer leaves no pipe to queue on: never block forever on send
        self.sock.setsockopt(zmq.SNDTIMEO, 2000)
        if curve:
            pair = keys.load_pair(kr.robot_secret(robot))
            self.sock.curve_secretkey = pair.secret
            self.sock.curve_publickey = pair.public
            self.sock.curve_serverkey = keys.load_public(kr.server_public)
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(address)
        self.robot = robot

    def send(self, data: bytes) -> bool:
        """False if nothing would take the message (no accepted connection) within 2 s."""
        try:
            self.sock.send(data)
            return True
        except zmq.Again:
            return False

    def recv(self, timeout: float = 5.0) -> wire.Message | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return wire.decode(self.sock.recv())

    def request(self, data: bytes, timeout: float = 5.0) -> wire.Message | None:
        self.send(data)
        return self.recv(timeout)

    def handshake(self, spec: wire.RobotSpec = wire.DEFAULT_SPEC) -> wire.Message | None:
        return self.request(wire.encode(wire.Handshake(
            protocol=wire.PROTOCOL_VERSION, robot_id=self.robot,
            config_hash=spec.config_hash(), spec=spec)))

    def events(self, timeout: float = 3.0) -> list[int]:
        from zmq.utils.monitor import recv_monitor_message
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.monitor.poll(50):
                out.append(recv_monitor_message(self.monitor)["event"])
        return out

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(0)
        self.sock.close(0)


def assert_same_steps(a: StepColumns, b: StepColumns, timestamps: bool = True) -> None:
    assert set(a.images) == set(b.images)
    for k in a.images:
        np.testing.assert_array_equal(a.images[k], b.images[k])
    fields = ["proprio", "action", "action_tokens", "logprob", "policy_version", "intervention"]
    if timestamps:
        fields.append("timestamp")
    for f in fields:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tiny_policy_onnx(path: Path, version: int, *, nan: bool = False, seed: int = 0,
                     image_shape=(32, 32, 3), action_dim: int = 4, bins: int = 16,
                     sentences: tuple[str, ...] = ("reach the goal",)) -> Path:
    """A small ONNX graph with the exported actor's interface and metadata (inputs image,
    proprio, text, gumbel, temperature; outputs tokens, logprobs, value), so fleet tests run
    real ONNX Runtime sessions in milliseconds. ``nan`` poisons its logits (fails the health
    check); ``seed`` changes its weights (a different artifact)."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(1, action_dim, bins)).astype(np.float32)
    if nan:
        w[:] = np.nan
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Div", ["w", "temperature"], ["scaled"]),
        helper.make_node("Add", ["scaled", "gumbel"], ["noisy"]),
        helper.make_node("ArgMax", ["noisy"], ["tok3"], axis=2, keepdims=1),
        helper.make_node("LogSoftmax", ["scaled"], ["logp_all"], axis=2),
        helper.make_node("GatherElements", ["logp_all", "tok3"], ["logp3"], axis=2),
        helper.make_node("Squeeze", ["logp3", "ax2"], ["logprobs"]),
        helper.make_node("Squeeze", ["tok3", "ax2"], ["tokens"]),
        helper.make_node("ReduceSum", ["proprio", "ax1"], ["psum"], keepdims=0),
        helper.make_node("Mul", ["psum", "zero"], ["value"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny-actor",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [1, *image_shape]),
         helper.make_tensor_value_info("proprio", f, [1, 4]),
         helper.make_tensor_value_info("text", f, [1, 8]),
         helper.make_tensor_value_info("gumbel", f, [1, action_dim, bins]),
         helper.make_tensor_value_info("temperature", f, [1])],
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, action_dim]),
         helper.make_tensor_value_info("logprobs", f, [1, action_dim]),
         helper.make_tensor_value_info("value", f, [1])],
        [numpy_helper.from_array(w, "w"),
         numpy_helper.from_array(np.array([2], np.int64), "ax2"),
         numpy_helper.from_array(np.array([1], np.int64), "ax1"),
         numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"format": "vlac-actor-onnx", "format_version": 1, "policy_version": version,
            "inputs": ["image", "proprio", "text", "gumbel", "temperature"],
            "outputs": ["tokens", "logprobs", "value"],
            "action_tokenizer": {"low": [-1.0] * action_dim, "high": [1.0] * action_dim,
                                 "bins": bins},
            "observation": {"camera": "corner", "image_shape": list(image_shape),
                            "proprio_dim": 4},
            "action_dim": action_dim, "action_bins": bins,
            "text_embeddings": {t: [0.0] * 8 for t in sentences}}
    p = model.metadata_props.add()
    p.key, p.value = "vlac", json.dumps(meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def read_paths_agree(root):
    """pandas over episodes/ and load_episode hold the same rows, each step once."""
    import pandas as pd

    from vlac.cloud.store.episodes import EpisodeStore

    store = EpisodeStore(root, read_only=True)
    eps = store.list_episodes()
    if not eps:
        return 0
    df = pd.read_parquet(root / "episodes", columns=["robot_id", "episode_id", "step"])
    df = df.astype({"robot_id": str, "episode_id": str})
    assert not df.duplicated(["robot_id", "episode_id", "step"]).any()
    for e in eps:
        loaded = store.load_episode(e["robot_id"], e["episode_id"])
        rows = df[(df.robot_id == e["robot_id"]) & (df.episode_id == e["episode_id"])]
        assert len(rows) == len(loaded) == e["n_steps"] == e["outcome"]["n_steps"]
        assert sorted(rows.step) == list(range(len(loaded)))
    return len(eps)

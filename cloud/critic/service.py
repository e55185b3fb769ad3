"""The critic as a service: rewards for a whole episode per request, over ZeroMQ + msgpack.

The learner asks ``episode_rewards(task, frames, stride)`` and gets back r_t = delta(o_t,
o_t+k) and the done probability for every step, computed in batches (image features once per
frame, all pairs of the episode in one batched pass). ``RewardServer`` serves a ROUTER socket
(one request per message, a bad request gets a RewardError naming the problem and the
server keeps serving); ``RewardClient`` is its DEALER client with a timeout;
``InProcessRewards`` offers the same call without sockets (tests, single-process runs).
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import msgspec
import numpy as np
import zmq

from vlac.cloud.critic.model import SmallVLACCritic
from vlac.shared.config import check, describe, opt
from vlac.shared.critic_wire import (
    ENCODER,
    REPLY_DECODER,
    REQUEST_DECODER,
    RewardError,
    RewardReply,
    RewardRequest,
)
from vlac.shared.signals import on_stop_signals
from vlac.shared.wire import Array, WireError

log = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 256 * 1024 * 1024


class RewardSource(Protocol):
    def episode_rewards(self, task: str, frames: np.ndarray, stride: int = 1,
                        reference: np.ndarray | None = None, from_first: bool = False
                        ) -> tuple[np.ndarray, np.ndarray]: ...


class InProcessRewards:
    def __init__(self, critic: SmallVLACCritic) -> None:
        self.critic = critic

    def episode_rewards(self, task, frames, stride=1, reference=None, from_first=False):
        return self.critic.episode_rewards(task, frames, stride, reference, from_first)


Backend = Literal["small", "transformers", "vllm"]
BACKENDS = get_args(Backend)  # one list: the flag's choices and the check below


@dataclass
class RewardServiceConfig:
    critic: Path = opt(Path(".cache/critic/critic.pt"),
                       "Critic to serve: the small critic's .pt file (--backend small), or "
                       "the folder of a prepared transformers checkpoint (transformers, "
                       "vllm); with --object-store, that folder's key prefix there.")
    backend: Backend = opt(
        "small", "What scores the pairs: the small VLAC critic (torch), a transformers "
                 "checkpoint (TransformersCritic), or the same checkpoint decoded by vLLM "
                 "(run from vLLM's own venv: infra/vllm/install.sh).")
    object_store: str = opt("", "Fetch --critic (a key prefix) from this object store (a "
                                "folder or s3://bucket/prefix) into --cache-dir first.")
    cache_dir: Path = opt(Path(".cache/critic-models"),
                          "Where checkpoints fetched from the object store are kept.")
    device: str = opt("cpu", "transformers backend: torch device (cuda on GPU hosts).")
    dtype: Literal["float32", "bfloat16", "float16"] = opt(
        "float32", "transformers and vllm backends: weights' dtype (bfloat16 on GPUs).")
    image_tiles: bool = opt(True, "InternVL processors: tile large frames into 448 px crops "
                                  "(off: one tile per frame). Must match the fine-tuning.")
    max_reference_frames: int = opt(8, "vllm backend: most reference frames per request "
                                       "(vLLM sizes its multimodal budget by it).")
    max_model_len: int = opt(4096, "vllm backend: longest prompt, in tokens.")
    kv_cache_mib: int = opt(512, "vllm backend on CPU: KV cache size (0: vLLM's own sizing, "
                                 "e.g. --vllm-args gpu_memory_utilization=0.85 on GPUs).")
    vllm_args: list[str] = opt([], "vllm backend: more vllm.LLM arguments as KEY=VALUE "
                                     "(values read as YAML: 0.85, true, 2).")
    bind: str = opt("tcp://127.0.0.1:5560", "ZeroMQ address to serve on.")
    duration_s: float = opt(0.0, "Stop after this many seconds (0: until stopped).")

    def __post_init__(self) -> None:
        self.critic = Path(self.critic)
        self.cache_dir = Path(self.cache_dir)
        check(self.bind.startswith(("tcp://", "ipc://", "inproc://")), "bind",
              f"{self.bind!r} is not a ZeroMQ address")
        check(self.backend in BACKENDS, "backend", f"use one of {', '.join(BACKENDS)}")
        check(self.max_reference_frames >= 0, "max_reference_frames", "use 0 or more")
        check(self.max_model_len >= 64, "max_model_len", "use 64 tokens or more")
        check(self.kv_cache_mib >= 0, "kv_cache_mib", "use 0 (vLLM's sizing) or more MiB")
        self.engine_args()  # refuse a malformed KEY=VALUE now, not after a model load

    def engine_args(self) -> dict:
        """``--vllm-args`` as a dict."""
        import yaml

        out = {}
        for item in self.vllm_args:
            key, sep, value = item.partition("=")
            check(bool(sep and key.strip()), "vllm_args",
                  f"{item!r} is not KEY=VALUE (e.g. gpu_memory_utilization=0.85)")
            out[key.strip()] = yaml.safe_load(value)
        return out


def critic_path(cfg: RewardServiceConfig) -> Path:
    """--critic, fetched from --object-store into --cache-dir first when one is given."""
    if not cfg.object_store:
        return cfg.critic
    from vlac.shared.objstore import download_prefix, open_store

    key = cfg.critic.as_posix().strip("/")
    store = open_store(cfg.object_store)
    if cfg.backend == "small":  # one file
        return store.get_file(key, cfg.cache_dir / key)
    return download_prefix(store, key, cfg.cache_dir / key)


def load_critic(cfg: RewardServiceConfig):
    """The critic ``cfg`` names, on its backend (anything with ``episode_rewards``)."""
    path = critic_path(cfg)
    tiles = None if cfg.image_tiles else {"crop_to_patches": False}
    if cfg.backend == "small":
        return SmallVLACCritic.load(path)
    if cfg.backend == "transformers":
        import torch

        from vlac.cloud.models.hf_critic import TransformersCritic

        return TransformersCritic(path, device=cfg.device, dtype=getattr(torch, cfg.dtype),
                                  images_kwargs=tiles)
    from vlac.cloud.models.vllm_critic import VLLMCritic

    return VLLMCritic(path, dtype=cfg.dtype, max_reference_frames=cfg.max_reference_frames,
                      max_model_len=cfg.max_model_len,
                      kv_cache_bytes=cfg.kv_cache_mib << 20, images_kwargs=tiles,
                      engine_args=cfg.engine_args())


class RewardServer:
    def __init__(self, critic: SmallVLACCritic, bind: str, ctx: zmq.Context | None = None):
        self.critic = critic
        self.bind = bind
        self.ctx = ctx or zmq.Context.instance()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.address = bind
        self.served = 0
        self.errors = 0

    def stop(self) -> None:
        self._stop.set()

    def wait_ready(self, timeout: float = 30.0) -> str:
        if not self._ready.wait(timeout):
            raise TimeoutError("reward server did not start")
        return self.address

    def _answer(self, payload: bytes) -> bytes:
        try:
            req = REQUEST_DECODER.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            self.errors += 1
            return ENCODER.encode(RewardError(request_id=-1, message=f"bad request: {e}"))
        try:
            if req.schema_version != 1:
                raise ValueError(f"schema version {req.schema_version} not supported (1)")
            frames = req.frames.to_numpy("frames")
            ref = req.reference.to_numpy("reference") if req.reference is not None else None
            delta, done = self.critic.episode_rewards(req.task, frames, req.stride, ref,
                                                     req.from_first)
        except (WireError, ValueError) as e:
            self.errors += 1
            return ENCODER.encode(RewardError(request_id=req.request_id, message=str(e)))
        except Exception as e:  # a critic bug answers this request; the service keeps going
            self.errors += 1
            log.exception("critic failed on request %d", req.request_id)
            return ENCODER.encode(RewardError(request_id=req.request_id,
                                              message=f"critic failed: {e!r}"))
        self.served += 1
        return ENCODER.encode(RewardReply(request_id=req.request_id,
                                       delta=Array.from_numpy(delta.astype(np.float32)),
                                       done_prob=Array.from_numpy(done.astype(np.float32))))

    def warm_up(self) -> None:
        """One request through the critic before binding: its first call loads the image
        and text encoders (seconds on a CPU), which would otherwise delay the first robot's
        progress checks past their episode."""
        try:
            self.critic.episode_rewards("warm up", np.zeros((2, 64, 64, 3), np.uint8))
        except Exception:  # a critic that fails here answers (with an error) when asked
            log.warning("critic warm-up failed; serving anyway", exc_info=True)

    def serve(self, duration_s: float = 0.0) -> None:
        import time

        self.warm_up()
        sock = self.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if self.bind.endswith(":0"):
            host = self.bind.rsplit(":", 1)[0]
            self.address = f"{host}:{sock.bind_to_random_port(host)}"
        else:
            sock.bind(self.bind)
        self._ready.set()
        t0 = time.monotonic()
        try:
            while not self._stop.is_set():
                if duration_s and time.monotonic() - t0 > duration_s:
                    break
                if not sock.poll(100):
                    continue
                frames = sock.recv_multipart()
                if len(frames) != 2:
                    continue
                sock.send_multipart([frames[0], self._answer(frames[1])])
        finally:
            sock.close(0)


class RewardClient:
    """The learner's side. Every call has a timeout; errors raise with the server's reason."""

    def __init__(self, address: str, timeout_s: float = 60.0,
                 ctx: zmq.Context | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.ctx = ctx or zmq.Context.instance()
        self._ids = itertools.count()
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(self.address)
        return s

    def close(self) -> None:
        self._sock.close(0)

    def episode_rewards(self, task, frames, stride=1, reference=None, from_first=False):
        rid = next(self._ids)
        req = RewardRequest(request_id=rid, task=task, frames=Array.from_numpy(frames),
                            stride=stride, from_first=from_first,
                            reference=Array.from_numpy(reference) if reference is not None
                            else None)
        self._sock.send(ENCODER.encode(req))
        while True:
            if not self._sock.poll(int(self.timeout_s * 1000)):
                self._sock.close(0)  # drop whatever might still come for the lost request
                self._sock = self._connect()
                raise TimeoutError(f"no answer from the reward service at {self.address} "
                                   f"within {self.timeout_s}s; is `vlac critic serve` running?")
            rep = REPLY_DECODER.decode(self._sock.recv())
            if rep.request_id != rid:
                continue  # a late answer to an earlier request, or to garbage we never sent
            if isinstance(rep, RewardError):
                raise ValueError(f"reward service refused the request: {rep.message}")
            return rep.delta.to_numpy().copy(), rep.done_prob.to_numpy().copy()


def main(cfg: RewardServiceConfig) -> None:
    print(describe(cfg), flush=True)
    server = RewardServer(load_critic(cfg), cfg.bind)
    on_stop_signals(server.stop)
    server.serve(cfg.duration_s)
    print(f"reward service stopped after {server.served} requests ({server.errors} refused)")

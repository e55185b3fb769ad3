"""The wire protocol between robots and the cloud: typed msgpack messages, never pickle.

Every message on the wire is a msgpack array ``[type, schema_version, body]``. The
envelope is decoded first (the body stays an undecoded view), so a message of an unknown
type, a schema version this side does not speak, or a size over its type's cap is refused
with an error that says so before the body is even parsed. Bodies are msgspec Structs;
decoding checks every field's type and names the offending field on failure
(``$.steps.proprio.shape``). Arrays travel as ``(dtype, shape, bytes)``; the bytes are
decoded as a zero-copy view into the received frame, unless they are compressed.

Camera blocks, a chunk's (T, H, W, C) frames of one camera, may travel zstd-compressed
(``Array.codec == "zstd"``): consecutive frames share most of their pixels, so a block of 16
Meta-World frames shrinks about 10x, which the robot's spool, its uplink and the ingest all
feel. A compressed array's size is known from its shape before a byte is decompressed, so a
decompression bomb is refused by its claimed size (``MAX_DECODED_BYTES``) and a frame that
decompresses to anything but exactly that size is refused too. A chunk that carries a
compressed array is schema version 2; a version-1 reader refuses it by its version.

Steps inside an episode chunk are columnar: each field is one array whose first axis is the
step index, which is both compact on the wire and exactly what the episode store writes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from typing import Annotated, Any, ClassVar, Literal

import msgspec
import numpy as np
import zstandard

PROTOCOL_VERSION = 1
"""Bumped when the handshake or envelope changes; robots and ingest must agree."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"
r"""Robot and episode ids: safe as file names, so they can never escape the store. ``\Z``,
not ``$``: ``$`` also matches before a final newline, and msgspec searches patterns."""
_ID_RE = re.compile(ID_PATTERN)

INT64_MAX = 2**63 - 1
MAX_STEP_INDEX = 2**31 - 1
"""Steps in one episode, and so any step index: far beyond any real episode (years at
10 Hz), and small enough that no sum of step counts leaves int64."""
MAX_ARRAY_DIM = 2**31 - 1
"""Largest length of any one array axis on the wire."""

Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
NonNeg = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
StepIndex = Annotated[int, msgspec.Meta(ge=0, le=MAX_STEP_INDEX)]

ALLOWED_DTYPES = {"uint8", "int32", "int64", "float32", "float64", "bool"}
CODECS = ("", "zstd")
"""How an array's bytes travel: as they are (""), or as one zstd frame."""
IMAGE_CODECS = ("zstd", "none")
"""What a robot's recorder may do with its camera blocks (``SenderConfig.image_codec``)."""
DEFAULT_IMAGE_CODEC = "zstd"
ZSTD_LEVEL = 1
"""Level 1: 10.5x on blocks of 16 Meta-World frames at about 1.2 GB/s on one core; level 3
gains 10% in size for 35% more time, which a robot's CPU would rather spend on its policy."""
MAX_DECODED_BYTES = 256 * 1024 * 1024
"""Most bytes a chunk's arrays may decompress to (a raw chunk is capped at 64 MiB on the
wire; compression lets a chunk hold about 10x the steps, not more)."""


class WireError(ValueError):
    """A message that cannot be accepted. ``field`` names the offending part."""

    def __init__(self, code: str, message: str, field: str = "") -> None:
        super().__init__(f"{code}: {message}" + (f" (field {field})" if field else ""))
        self.code = code
        self.field = field
        self.detail = message


# --------------------------------------------------------------------------- arrays
class Array(msgspec.Struct, array_like=True, frozen=True):
    """An n-d array as (dtype, shape, C-order bytes[, codec])."""

    dtype: str
    shape: tuple[Annotated[int, msgspec.Meta(ge=0, le=MAX_ARRAY_DIM)], ...]
    data: memoryview
    codec: Literal["", "zstd"] = ""

    @classmethod
    def from_numpy(cls, arr: np.ndarray, codec: str = "") -> Array:
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise WireError("bad_dtype", f"dtype {arr.dtype.name} is not allowed on the wire; "
                            f"use one of {sorted(ALLOWED_DTYPES)}")
        if codec not in CODECS:
            raise ValueError(f"codec {codec!r} is not one of {list(CODECS)}")
        data = memoryview(arr).cast("B")
        if codec == "zstd":
            data = memoryview(_zstd_compressor().compress(data))
        return cls(arr.dtype.name, tuple(int(s) for s in arr.shape), data, codec)

    def nbytes(self) -> int:
        """Bytes of the array itself (after decompression), from its dtype and shape."""
        dt = np.dtype(self.dtype) if self.dtype in ALLOWED_DTYPES else np.dtype("uint8")
        return math.prod(self.shape) * dt.itemsize

    def to_numpy(self, field: str = "array") -> np.ndarray:
        """Check dtype, shape and byte count, and view the bytes as an array (no copy, unless
        compressed: then decompressed into a new read-only array of exactly that size)."""
        if self.dtype not in ALLOWED_DTYPES:
            raise WireError("bad_dtype", f"dtype {self.dtype!r} is not one of "
                            f"{sorted(ALLOWED_DTYPES)}", field + ".dtype")
        if len(self.shape) > 5:
            raise WireError("bad_shape", f"{len(self.shape)} dimensions is more than 5",
                            field + ".shape")
        dt = np.dtype(self.dtype)
        expect = self.nbytes()
        data = self.data if self.codec == "" else self._decompressed(expect, field)
        if len(data) != expect:
            raise WireError("bad_length", f"shape {list(self.shape)} of {self.dtype} needs "
                            f"{expect} bytes but {len(data)} came", field + ".data")
        try:
            return np.frombuffer(data, dtype=dt).reshape(self.shape)
        except ValueError as e:  # e.g. an empty array whose other axes are too large
            raise WireError("bad_shape", f"shape {list(self.shape)} cannot hold an array "
                            f"here ({e})", field + ".shape") from None

    def _decompressed(self, expect: int, field: str) -> bytes:
        if expect > MAX_DECODED_BYTES:
            raise WireError("too_large", f"shape {list(self.shape)} of {self.dtype} would "
                            f"decompress to {expect} bytes, over the cap of "
                            f"{MAX_DECODED_BYTES}; send fewer steps per chunk", field + ".shape")
        if expect == 0:
            return b""
        try:
            # The frame's own header may claim a size, and the decompressor trusts it over
            # max_output_size: check it against the shape before a byte is allocated.
            claimed = zstandard.frame_content_size(self.data)
            if claimed not in (-1, expect):
                raise WireError("bad_length", f"shape {list(self.shape)} of {self.dtype} "
                                f"needs {expect} bytes but the zstd frame says it holds "
                                f"{claimed}", field + ".data")
            out = _zstd_decompressor().decompress(self.data, max_output_size=expect)
        except zstandard.ZstdError as e:
            raise WireError("bad_data", f"not a zstd frame of {expect} bytes ({e}); the "
                            "sender's spool or link corrupted it", field + ".data") from None
        if len(out) != expect:
            raise WireError("bad_length", f"shape {list(self.shape)} of {self.dtype} needs "
                            f"{expect} bytes but the zstd frame holds {len(out)}",
                            field + ".data")
        return out


def _zstd_compressor() -> zstandard.ZstdCompressor:
    # Compressor objects are not thread-safe; one per thread, made once (they hold buffers).
    c = getattr(_zstd_local, "c", None)
    if c is None:
        c = _zstd_local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    return c


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_zstd_local, "d", None)
    if d is None:
        d = _zstd_local.d = zstandard.ZstdDecompressor()
    return d


_zstd_local = threading.local()


# --------------------------------------------------------------------------- specs
class RobotSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a robot's steps look like. Its hash is the handshake's config hash."""

    cameras: dict[str, tuple[NonNeg, NonNeg, NonNeg]]
    """camera name -> (height, width, channels) of the uint8 image."""
    proprio_dim: NonNeg
    action_dim: NonNeg
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    action_bins: Annotated[int, msgspec.Meta(ge=2, le=65536)] = 256

    def config_hash(self) -> str:
        canonical = json.dumps(msgspec.to_builtins(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def differences(self, other: RobotSpec) -> list[str]:
        """Human-readable list of fields where ``other`` differs from this spec."""
        mine, theirs = msgspec.to_builtins(self), msgspec.to_builtins(other)
        return [f"{k}: expected {mine[k]!r}, got {theirs[k]!r}"
                for k in mine if mine[k] != theirs[k]]


DEFAULT_SPEC = RobotSpec(
    cameras={"corner": (128, 128, 3)},
    proprio_dim=4,
    action_dim=4,
    action_low=(-1.0, -1.0, -1.0, -1.0),
    action_high=(1.0, 1.0, 1.0, 1.0),
    action_bins=256,
)
"""Meta-World's arm: one 128x128 RGB camera, (x, y, z, gripper) proprio, 4-dim delta action."""


# --------------------------------------------------------------------------- messages
class Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    """The newest schema version of this message type."""
    ACCEPTED_VERSIONS: ClassVar[tuple[int, ...]] = (1,)
    MAX_BYTES: ClassVar[int] = 64 * 1024

    def schema_version(self) -> int:
        """The version this message is written as: the oldest that can express it, so that
        an older reader takes everything it can read."""
        return self.VERSION


class Handshake(Message):
    """First message of every connection. Refused with a reason on any mismatch."""

    TYPE: ClassVar[str] = "handshake"
    protocol: int
    robot_id: Id
    config_hash: str
    spec: RobotSpec
    software: str = ""


class HandshakeReply(Message):
    TYPE: ClassVar[str] = "handshake_reply"
    accepted: bool
    reason: str = ""
    protocol: int = PROTOCOL_VERSION
    ingest_id: str = ""


MAX_SEQ = 1_000_000
"""Most chunks in one episode, minus one."""


class Outcome(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Carried by the last chunk of an episode."""

    success: bool
    n_chunks: Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ + 1)]
    n_steps: Annotated[int, msgspec.Meta(ge=1, le=MAX_STEP_INDEX)]
    reason: str = ""
    """Why it ended: 'success', 'timeout', 'operator_abort', ..."""


class Steps(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Columnar steps: every array's first axis is the step index (length T)."""

    images: dict[str, Array]
    """camera -> (T, H, W, C) uint8."""
    proprio: Array
    """(T, proprio_dim) float32."""
    action: Array
    """(T, action_dim) float32, the continuous action sent to the robot."""
    action_tokens: Array
    """(T, action_dim) int32, one token per action dimension."""
    logprob: Array
    """(T,) float32, behaviour log-probability of the tokens (0 for operator steps)."""
    policy_version: Array
    """(T,) int64, version of the policy that chose each step."""
    intervention: Array
    """(T,) bool, True where an operator acted instead of the policy."""
    timestamp: Array
    """(T,) float64, unix seconds when the step's observation was taken."""


class EpisodeChunk(Message):
    TYPE: ClassVar[str] = "chunk"
    VERSION: ClassVar[int] = 2
    """2: arrays may be compressed (``Array.codec``); 1: every array raw."""
    ACCEPTED_VERSIONS: ClassVar[tuple[int, ...]] = (1, 2)
    MAX_BYTES: ClassVar[int] = 64 * 1024 * 1024
    robot_id: Id
    episode_id: Id
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    task: Annotated[str, msgspec.Meta(max_length=1000)]
    steps: Steps
    first_step: StepIndex = 0
    """Index of this chunk's first step within the episode."""
    task_id: Annotated[str, msgspec.Meta(max_length=100)] = ""
    """Machine name of the task where one exists (Meta-World's 'push-v3'), for per-task
    reports; models only ever see ``task``, the sentence."""
    source: Literal["policy", "demo", "import"] = "policy"
    """Who made the episode: robots running a policy (with operator takeovers marked per
    step), recorded demonstrations, or a dataset import."""
    final: Outcome | None = None

    def arrays(self) -> dict[str, Array]:
        """Every array of the chunk by its field name (``steps.images.corner``, ...)."""
        out = {f"steps.images.{cam}": a for cam, a in self.steps.images.items()}
        for f in Steps.__struct_fields__:
            if f != "images":
                out[f"steps.{f}"] = getattr(self.steps, f)
        return out

    def schema_version(self) -> int:
        compressed = any(a.codec for a in self.arrays().values())
        return 2 if compressed else 1


class Ack(Message):
    TYPE: ClassVar[str] = "ack"
    robot_id: Id
    episode_id: Id
    seq: NonNeg
    status: Literal["stored", "duplicate"]


class Error(Message):
    """A refusal. ``retry`` says whether sending the same message again can succeed."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    field: str = ""
    episode_id: str = ""
    seq: int = -1
    retry: bool = False


class Heartbeat(Message):
    TYPE: ClassVar[str] = "heartbeat"
    robot_id: Id
    policy_version: Annotated[int, msgspec.Meta(ge=-1, le=INT64_MAX)]
    spool_depth: NonNeg
    spool_bytes: NonNeg = 0
    time: float = 0.0
    update_error: Annotated[str, msgspec.Meta(max_length=500)] = ""
    """The weight updater's last failure (empty when the last update applied cleanly)."""
    announcements_refused: NonNeg = 0
    """Announcements the updater refused since it started: unsigned or badly signed,
    addressed to another robot, malformed (an attack or a misconfigured publisher)."""
    announcements_replayed: NonNeg = 0
    """Genuinely signed announcements older than the last one applied (replays)."""


class WeightAnnouncement(Message):
    """Robot ``robot_id`` should run ``version``. ``assignment`` is the signed
    ``vlac.shared.manifest.Assignment`` (its bytes are what ``signature`` covers; the plain
    fields here are only for routing and logs); ``manifest`` is the version's encoded
    ``SignedManifest``. Published on the topic ``robot_id + "\\0"``."""

    TYPE: ClassVar[str] = "weights"
    MAX_BYTES: ClassVar[int] = 64 * 1024
    robot_id: Id
    version: NonNeg
    seq: NonNeg
    assignment: bytes
    signature: bytes
    manifest: bytes


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Handshake, HandshakeReply, EpisodeChunk, Ack, Error, Heartbeat,
                WeightAnnouncement)
}
HARD_MAX_BYTES = max(cls.MAX_BYTES for cls in MESSAGE_TYPES.values()) + 1024
"""Nothing larger is even looked at (also set as ZMQ_MAXMSGSIZE on sockets)."""

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(tuple[str, int, msgspec.Raw])
_decoders = {t: msgspec.msgpack.Decoder(cls) for t, cls in MESSAGE_TYPES.items()}


def encode(msg: Message) -> bytes:
    """Message -> bytes for the wire."""
    return _encoder.encode((msg.TYPE, msg.schema_version(), msg))


def decode(frame: bytes | memoryview, expect: tuple[type[Message], ...] = ()) -> Message:
    """Bytes from the wire -> a typed message, or a WireError naming what is wrong.

    ``expect`` limits which message types this receiver accepts.
    """
    size = len(frame)
    if size > HARD_MAX_BYTES:
        raise WireError("too_large", f"message of {size} bytes exceeds the hard cap of "
                        f"{HARD_MAX_BYTES} bytes")
    try:
        mtype, version, body = _envelope_decoder.decode(frame)
    except Exception as e:  # DecodeError, ValidationError, RecursionError, ...: all refusals
        raise WireError("malformed", "not a vlac message: expected a msgpack array "
                        f"[type, schema_version, body] ({type(e).__name__}: {e})") from None
    cls = MESSAGE_TYPES.get(mtype)
    if cls is None or (expect and cls not in expect):
        allowed = sorted(c.TYPE for c in expect) if expect else sorted(MESSAGE_TYPES)
        raise WireError("unknown_type", f"message type {mtype!r} is not accepted here; "
                        f"expected one of {allowed}", "type")
    if version not in cls.ACCEPTED_VERSIONS:
        speaks = ", ".join(map(str, cls.ACCEPTED_VERSIONS))
        raise WireError("schema_version", f"{mtype!r} schema version {version} is not "
                        f"supported; this side speaks version {speaks}. Upgrade the "
                        "older side so both run the same vlac-fleet release", "schema_version")
    if size > cls.MAX_BYTES:
        raise WireError("too_large", f"{mtype!r} message of {size} bytes exceeds its cap of "
                        f"{cls.MAX_BYTES} bytes; send fewer steps per chunk", "body")
    try:
        return _decoders[mtype].decode(body)
    except msgspec.ValidationError as e:
        text = str(e)
        field = text.rsplit("- at `", 1)[-1].rstrip("`") if "- at `" in text else "body"
        raise WireError("invalid", text, field) from None
    except Exception as e:  # a hostile body (nesting that exhausts the stack, ...) is refused
        raise WireError("malformed", f"{mtype!r} body is not a valid message "
                        f"({type(e).__name__}: {e})", "body") from None


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: str, field: str) -> str:
    if not is_valid_id(value):
        raise WireError("bad_id", f"{value!r} is not a valid id (letters, digits, '_', '.', "
                        "'-', at most 64, starting with a letter or digit)", field)
    return value


def to_dict(msg: msgspec.Struct) -> dict[str, Any]:
    return msgspec.to_builtins(msg)

"""Hypothesis strategies for hostile frames: what a robot with a valid key could send ingest.

Each strategy yields ``(input_class, frame_bytes)``. The classes, so a fuzz report can say
what it covered:

- ``random_bytes``: anything at all, mostly not msgpack;
- ``random_envelope``: a msgpack ``[type, version, body]`` with any type, version and body;
- ``deep_nesting``: arrays nested thousands deep, in the envelope or in a chunk's body;
- ``mutated_chunk`` / ``mutated_heartbeat`` / ``mutated_handshake``: a valid message with one
  to three fields replaced by any msgpack value, an (dtype, shape, bytes) array of any shape
  (zero axes beside huge ones, negative, too many), boundary integers (2**63, 2**64 - 1 ...),
  NaN and infinity, a field deleted or an unknown one added;
- ``typed_chunk``: a chunk whose fields all have the right types but arrays of any allowed
  dtype and shape, byte counts off by one, any bytes (NaN, out-of-range tokens), any seq,
  final outcome and extreme first step: what chunk validation must judge;
- ``damaged_chunk``: a valid chunk's bytes truncated or with bytes overwritten;
- ``compressed_chunk``: a chunk whose camera block is zstd-compressed and then damaged:
  truncated or overwritten frames, frames of another size than the shape says, a
  decompression bomb (a few bytes claiming gigabytes), an image-like shape that lies about
  the step count, or any bytes;
- ``racing_chunks``: valid chunks of a few episodes with any seq, first step, length and
  final outcome: duplicates, second finals, overlaps, gaps (the store's consistency rules).
"""

from __future__ import annotations

import contextlib
import copy
import math

import hypothesis.strategies as hs
import msgspec
import numpy as np

from vlac.shared import wire
from vlac.shared.episode import make_chunk, synthetic_steps

BOUNDARY_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1,
                 -(2**63), -(2**31)]
"""Where fixed-width integers overflow; msgpack carries [-2**63, 2**64 - 1]."""

_ints = hs.one_of(hs.sampled_from(BOUNDARY_INTS), hs.integers(-(2**63), 2**64 - 1),
                  hs.integers(-3, 300))
_leaves = hs.one_of(hs.none(), hs.booleans(), _ints,
                    hs.floats(allow_nan=True, allow_infinity=True),
                    hs.text(max_size=24), hs.binary(max_size=64))
VALUES = hs.recursive(_leaves, lambda inner: hs.lists(inner, max_size=4)
                      | hs.dictionaries(hs.text(max_size=12), inner, max_size=4),
                      max_leaves=12)
"""Any msgpack value, a few levels deep."""

_DTYPES = [*sorted(wire.ALLOWED_DTYPES), "float16", "int8", "complex128", "object", "U8",
           "<f8", "V4", "", "uint8\x00"]
ARRAYS = hs.tuples(
    hs.sampled_from(_DTYPES),
    hs.lists(hs.one_of(hs.integers(0, 8), hs.sampled_from(BOUNDARY_INTS)), max_size=7),
    hs.one_of(hs.binary(max_size=256), hs.just(b"")),
).map(list)
"""Arrays as they travel, ``[dtype, shape, bytes]``, with any of the three wrong."""


_BODIES: dict[tuple[str, str], dict[str, dict]] = {}


def _valid_bodies(spec: wire.RobotSpec, robot_id: str) -> dict[str, dict]:
    """Builtins (bytes kept) of one valid message of each type a robot sends."""
    key = (spec.config_hash(), robot_id)
    if key not in _BODIES:
        _BODIES[key] = _build_bodies(spec, robot_id)
    return _BODIES[key]


def _build_bodies(spec: wire.RobotSpec, robot_id: str) -> dict[str, dict]:
    steps = synthetic_steps(spec, 2)
    chunk = make_chunk(robot_id, "fz-base", 0, "push the puck", steps,
                       wire.Outcome(success=True, n_chunks=1, n_steps=2), task_id="push-v3")
    heartbeat = wire.Heartbeat(robot_id=robot_id, policy_version=3, spool_depth=1,
                               update_error="none")
    handshake = wire.Handshake(protocol=wire.PROTOCOL_VERSION, robot_id=robot_id,
                               config_hash=spec.config_hash(), spec=spec)
    # the body as a plain msgpack reader sees it: dicts, lists, bytes
    return {m.TYPE: msgspec.msgpack.decode(wire.encode(m))[2]
            for m in (chunk, heartbeat, handshake)}


def _paths(body: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a nested dict/list body (arrays' parts included)."""
    out = [prefix] if prefix else []
    if isinstance(body, dict):
        for k, v in body.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(body, list) and len(body) <= 8:
        for i, v in enumerate(body):
            out += _paths(v, (*prefix, i))
    return out


def _set(body: object, path: tuple, value: object, op: str) -> None:
    *head, last = path
    for k in head:
        body = body[k]
    if op == "delete" and isinstance(body, dict):
        del body[last]
    elif op == "extra" and isinstance(body, dict):
        body["unexpected_" + str(last)] = value
    else:
        body[last] = value


def _encode(mtype: str, version: object, body: object) -> bytes:
    return msgspec.msgpack.encode([mtype, version, body])


@hs.composite
def mutated(draw, spec: wire.RobotSpec, robot_id: str, mtype: str) -> tuple[str, bytes]:
    body = copy.deepcopy(_valid_bodies(spec, robot_id)[mtype])
    paths = _paths(body)
    for _ in range(draw(hs.integers(1, 3))):
        path = draw(hs.sampled_from(paths))
        value = draw(hs.one_of(VALUES, ARRAYS, _ints))
        op = draw(hs.sampled_from(["replace"] * 4 + ["delete", "extra"]))
        # an earlier mutation may have removed the path: the frame is hostile enough
        with contextlib.suppress(KeyError, IndexError, TypeError):
            _set(body, path, value, op)
    return f"mutated_{'chunk' if mtype == 'chunk' else mtype}", _encode(mtype, 1, body)


@hs.composite
def deep_nesting(draw, spec: wire.RobotSpec, robot_id: str) -> tuple[str, bytes]:
    depth = draw(hs.sampled_from([64, 1_000, 10_000, 100_000, 1_000_000]))
    nest = b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    where = draw(hs.sampled_from(["envelope", "body", "field"]))
    if where == "envelope":
        return "deep_nesting", nest
    if where == "body":
        return "deep_nesting", b"\x93\xa5chunk\x01" + nest
    body = copy.deepcopy(_valid_bodies(spec, robot_id)["chunk"])
    raw = _encode("chunk", 1, {**body, "task": "\x00PLACEHOLDER\x00"})
    marker = msgspec.msgpack.encode("\x00PLACEHOLDER\x00")
    return "deep_nesting", raw.replace(marker, nest, 1)


@hs.composite
def damaged_chunk(draw, spec: wire.RobotSpec, robot_id: str) -> tuple[str, bytes]:
    raw = bytearray(_encode("chunk", 1, _valid_bodies(spec, robot_id)["chunk"]))
    if draw(hs.booleans()):
        return "damaged_chunk", bytes(raw[:draw(hs.integers(0, len(raw) - 1))])
    for _ in range(draw(hs.integers(1, 8))):
        # mostly the header (types, lengths, shapes), sometimes anywhere
        at = draw(hs.one_of(hs.integers(0, min(len(raw), 600) - 1),
                            hs.integers(0, len(raw) - 1)))
        raw[at] = draw(hs.integers(0, 255))
    return "damaged_chunk", bytes(raw)


@hs.composite
def compressed_chunk(draw, spec: wire.RobotSpec, robot_id: str) -> tuple[str, bytes]:
    import zstandard

    n = draw(hs.integers(1, 3))
    chunk = make_chunk(robot_id, "fz-z", 0, "push the puck", synthetic_steps(spec, n),
                       wire.Outcome(success=True, n_chunks=1, n_steps=n), image_codec="zstd")
    cam, block = next(iter(chunk.steps.images.items()))
    data, shape = bytearray(block.data), tuple(block.shape)
    kind = draw(hs.sampled_from(["valid", "truncate", "overwrite", "other_size", "bomb",
                                 "shape_lies", "any_bytes"]))
    if kind == "truncate":
        data = data[:draw(hs.integers(0, len(data) - 1))]
    elif kind == "overwrite":
        for _ in range(draw(hs.integers(1, 6))):
            data[draw(hs.integers(0, len(data) - 1))] = draw(hs.integers(0, 255))
    elif kind == "other_size":
        size = block.nbytes() + draw(hs.sampled_from([-1, 1, -block.nbytes(), 4096]))
        data = bytearray(zstandard.ZstdCompressor().compress(bytes(max(0, size))))
    elif kind == "bomb":  # tiny on the wire, gigabytes once decompressed
        t = draw(hs.sampled_from([10**5, 10**6, 2**31 - 1]))
        shape = (t, *shape[1:])
        data = bytearray(zstandard.ZstdCompressor().compress(bytes(1 << 20)))
    elif kind == "shape_lies":
        shape = (shape[0] + draw(hs.sampled_from([-1, 1, 1000])), *shape[1:])
    elif kind == "any_bytes":
        data = bytearray(draw(hs.binary(max_size=512)))
    images = {**chunk.steps.images, cam: wire.Array("uint8", shape, memoryview(bytes(data)),
                                                    "zstd")}
    steps = wire.Steps(images=images, **{f: getattr(chunk.steps, f)
                                          for f in chunk.steps.__struct_fields__
                                          if f != "images"})
    return "compressed_chunk", wire.encode(msgspec.structs.replace(chunk, steps=steps))


@hs.composite
def racing_chunks(draw, spec: wire.RobotSpec, robot_id: str) -> tuple[str, bytes]:
    """Valid chunks that may contradict each other across frames of one run."""
    seq, first, n = draw(hs.integers(0, 3)), draw(hs.integers(0, 12)), draw(hs.integers(1, 4))
    final = None
    if draw(hs.booleans()):
        final = wire.Outcome(success=draw(hs.booleans()), n_chunks=seq + 1,
                             n_steps=max(1, first + n + draw(hs.integers(-2, 2))))
    chunk = make_chunk(robot_id, draw(hs.sampled_from(["fz-a", "fz-b", "fz-c"])), seq,
                       "push the puck", synthetic_steps(spec, n, start_step=first), final,
                       first_step=first, image_codec=draw(hs.sampled_from(["", "zstd"])))
    return "racing_chunks", wire.encode(chunk)


@hs.composite
def _typed_array(draw, valid: wire.Array) -> wire.Array:
    """An array that decodes (an allowed dtype, a bounded shape) but may not fit its field:
    other dtype, other shape, a byte count off by a little, any bytes (NaN, huge tokens)."""
    kind = draw(hs.sampled_from(["valid", "other", "other", "empty_by_huge"]))
    if kind == "valid":
        dtype, shape = valid.dtype, valid.shape
    else:
        dtype = draw(hs.sampled_from(sorted(wire.ALLOWED_DTYPES)))
        shape = tuple(draw(hs.lists(hs.integers(0, 6), max_size=6)))
    if kind == "empty_by_huge":  # no elements, yet axes far beyond any memory
        huge = [b for b in BOUNDARY_INTS if b > 2**30]
        shape = tuple(draw(hs.permutations([0, *draw(hs.lists(hs.sampled_from(huge),
                                                               min_size=1, max_size=4))])))
    size = len(valid.data) if (dtype, shape) == (valid.dtype, valid.shape) else \
        math.prod(shape) * np.dtype(dtype).itemsize
    size = max(0, size + draw(hs.sampled_from([0, 0, 0, -1, 1])))
    data = draw(hs.binary(min_size=size, max_size=size)) if size <= 4096 else \
        bytes(size) if size <= 2**20 else b"\x00" * draw(hs.integers(0, 64))
    return wire.Array(dtype, shape, memoryview(data))


@hs.composite
def typed_chunk(draw, spec: wire.RobotSpec, robot_id: str) -> tuple[str, bytes]:
    """A chunk every field of which has the right type: what validation must judge."""
    n = draw(hs.integers(1, 3))
    steps = make_chunk(robot_id, "fz-t", 0, "t", synthetic_steps(spec, n)).steps
    fields = {f: getattr(steps, f) for f in steps.__struct_fields__ if f != "images"}
    for f in draw(hs.sets(hs.sampled_from(sorted(fields)), max_size=3)):
        fields[f] = draw(_typed_array(fields[f]))
    images = dict(steps.images)
    if draw(hs.booleans()):
        cam = draw(hs.sampled_from([*images, "other"]))
        images[cam] = draw(_typed_array(images.get(cam, next(iter(images.values())))))
    final = None
    if draw(hs.booleans()):
        final = wire.Outcome(success=True, n_chunks=draw(hs.integers(1, wire.MAX_SEQ + 1)),
                             n_steps=draw(hs.integers(1, wire.MAX_STEP_INDEX)))
    chunk = wire.EpisodeChunk(
        robot_id=robot_id, episode_id=draw(hs.sampled_from(["fz-t", "fz-u"])),
        seq=draw(hs.integers(0, wire.MAX_SEQ)), task="t", final=final,
        first_step=draw(hs.sampled_from([0, 1, wire.MAX_STEP_INDEX, 2**63 - 1, 2**64 - 1])),
        steps=wire.Steps(images=images, **fields))
    return "typed_chunk", wire.encode(chunk)


def frames(spec: wire.RobotSpec = wire.DEFAULT_SPEC,
           robot_id: str = "robot-0") -> hs.SearchStrategy[tuple[str, bytes]]:
    """Every class above, for a robot ``robot_id`` whose handshake ingest accepted."""
    envelope = hs.tuples(hs.sampled_from([*wire.MESSAGE_TYPES, "exec", ""]) | hs.text(max_size=8),
                         _ints, VALUES).map(lambda t: ("random_envelope", _encode(*t)))
    return hs.one_of(
        hs.binary(max_size=512).map(lambda b: ("random_bytes", b)),
        envelope,
        deep_nesting(spec, robot_id),
        mutated(spec, robot_id, "chunk"),
        mutated(spec, robot_id, "chunk"),
        typed_chunk(spec, robot_id),
        typed_chunk(spec, robot_id),
        mutated(spec, robot_id, "heartbeat"),
        mutated(spec, robot_id, "handshake"),
        damaged_chunk(spec, robot_id),
        compressed_chunk(spec, robot_id),
        racing_chunks(spec, robot_id),
    )

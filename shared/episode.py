"""Episode chunks as numpy columns: build them on the robot, validate them in the cloud."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlac.shared.tokenizer import ActionTokenizer
from vlac.shared.wire import (
    MAX_DECODED_BYTES,
    Array,
    EpisodeChunk,
    Outcome,
    RobotSpec,
    Steps,
    WireError,
)

STEP_FIELDS = ("proprio", "action", "action_tokens", "logprob", "policy_version",
               "intervention", "timestamp")
_DTYPES = {
    "proprio": "float32", "action": "float32", "action_tokens": "int32", "logprob": "float32",
    "policy_version": "int64", "intervention": "bool", "timestamp": "float64",
}


@dataclass
class StepColumns:
    """A chunk's steps as numpy arrays (first axis = step)."""

    images: dict[str, np.ndarray]
    proprio: np.ndarray
    action: np.ndarray
    action_tokens: np.ndarray
    logprob: np.ndarray
    policy_version: np.ndarray
    intervention: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return int(self.timestamp.shape[0])

    def to_wire(self, image_codec: str = "") -> Steps:
        """The wire's columns; ``image_codec="zstd"`` compresses each camera's block of
        frames (the other columns are a few hundred bytes per chunk). "none" (the config's
        word, ``SenderConfig.image_codec``) and "" both send them raw."""
        codec = "" if image_codec == "none" else image_codec
        return Steps(
            images={k: Array.from_numpy(v, codec) for k, v in self.images.items()},
            **{f: Array.from_numpy(np.asarray(getattr(self, f), dtype=_DTYPES[f]))
               for f in STEP_FIELDS},
        )


def make_chunk(robot_id: str, episode_id: str, seq: int, task: str, steps: StepColumns,
               final: Outcome | None = None, first_step: int = 0,
               source: str = "policy", task_id: str = "",
               image_codec: str = "") -> EpisodeChunk:
    return EpisodeChunk(robot_id=robot_id, episode_id=episode_id, seq=seq, task=task,
                        first_step=first_step, steps=steps.to_wire(image_codec), final=final,
                        source=source, task_id=task_id)


def validate_chunk(chunk: EpisodeChunk, spec: RobotSpec) -> StepColumns:
    """Check a decoded chunk against the robot's spec; return its columns (zero-copy views).

    Raises WireError naming the field: wrong dtype or shape, inconsistent step counts, NaN or
    infinite values, out-of-range tokens, a final chunk whose counts do not add up, compressed
    arrays that would decompress past ``MAX_DECODED_BYTES`` or do not decompress to their size.
    Sizes are checked before anything is decompressed.
    """
    decoded = sum(a.nbytes() for a in chunk.arrays().values())
    if decoded > MAX_DECODED_BYTES:
        raise WireError("too_large", f"the chunk's arrays would take {decoded} bytes, over the "
                        f"cap of {MAX_DECODED_BYTES}; send fewer steps per chunk", "steps")
    cols = _step_arrays(chunk.steps)
    t = cols["timestamp"].shape[0] if cols["timestamp"].ndim == 1 else -1
    if t < 1:
        raise WireError("bad_shape", "a chunk needs at least one step and timestamp must be "
                        f"1-d, got shape {list(cols['timestamp'].shape)}", "steps.timestamp")
    expected_shapes = {
        "proprio": (t, spec.proprio_dim), "action": (t, spec.action_dim),
        "action_tokens": (t, spec.action_dim), "logprob": (t,), "policy_version": (t,),
        "intervention": (t,), "timestamp": (t,),
    }
    for f, shape in expected_shapes.items():
        if cols[f].shape != shape:
            raise WireError("bad_shape", f"expected shape {list(shape)}, got "
                            f"{list(cols[f].shape)}", f"steps.{f}.shape")
    images = _images(chunk.steps, spec, t)
    _check_values(cols, spec)
    if chunk.final is not None and chunk.final.n_chunks != chunk.seq + 1:
        raise WireError("bad_value", f"final chunk has seq {chunk.seq} but says the episode "
                        f"has {chunk.final.n_chunks} chunks (should be seq + 1)",
                        "final.n_chunks")
    return StepColumns(images=images, **cols)


def _step_arrays(steps: Steps) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {}
    for f in STEP_FIELDS:
        arr = getattr(steps, f).to_numpy(f"steps.{f}")
        if arr.dtype.name != _DTYPES[f]:
            raise WireError("bad_dtype", f"expected {_DTYPES[f]}, got {arr.dtype.name}",
                            f"steps.{f}.dtype")
        cols[f] = arr
    return cols


def _images(steps: Steps, spec: RobotSpec, t: int) -> dict[str, np.ndarray]:
    if set(steps.images) != set(spec.cameras):
        raise WireError("bad_cameras", f"expected cameras {sorted(spec.cameras)}, got "
                        f"{sorted(steps.images)}", "steps.images")
    images = {}
    for cam, (h, w, c) in spec.cameras.items():
        block = steps.images[cam]  # dtype and shape first: nothing is decompressed unchecked
        if block.dtype != "uint8":
            raise WireError("bad_dtype", f"images must be uint8, got {block.dtype!r}",
                            f"steps.images.{cam}.dtype")
        if tuple(block.shape) != (t, h, w, c):
            raise WireError("bad_shape", f"expected image shape {[t, h, w, c]} (steps, height,"
                            f" width, channels), got {list(block.shape)}",
                            f"steps.images.{cam}.shape")
        images[cam] = block.to_numpy(f"steps.images.{cam}")
    return images


def _check_values(cols: dict[str, np.ndarray], spec: RobotSpec) -> None:
    for f in ("proprio", "action", "logprob", "timestamp"):
        if not np.isfinite(cols[f]).all():
            raise WireError("not_finite", "contains NaN or infinity", f"steps.{f}")
    if (cols["logprob"] > 1e-4).any():
        raise WireError("bad_value", "log-probabilities must be <= 0", "steps.logprob")
    toks = cols["action_tokens"]
    if toks.size and (toks.min() < 0 or toks.max() >= spec.action_bins):
        raise WireError("bad_value", f"tokens must lie in [0, {spec.action_bins})",
                        "steps.action_tokens")


def concat_steps(parts: list[StepColumns]) -> StepColumns:
    if len(parts) == 1:
        return parts[0]
    return StepColumns(
        images={k: np.concatenate([p.images[k] for p in parts]) for k in parts[0].images},
        **{f: np.concatenate([getattr(p, f) for p in parts]) for f in STEP_FIELDS},
    )


def slice_steps(cols: StepColumns, start: int, stop: int | None = None) -> StepColumns:
    """Steps [start, stop) as views (no copy)."""
    sl = slice(start, stop)
    return StepColumns(images={k: v[sl] for k, v in cols.images.items()},
                       **{f: getattr(cols, f)[sl] for f in STEP_FIELDS})


def split_steps(cols: StepColumns, n: int) -> tuple[StepColumns, StepColumns | None]:
    """The first n steps, and the rest (None if nothing is left)."""
    if n >= len(cols):
        return cols, None
    return slice_steps(cols, 0, n), slice_steps(cols, n)


def synthetic_steps(spec: RobotSpec, n: int, *, start_step: int = 0, seed: int = 0,
                    policy_version: int = 0, t0: float = 0.0) -> StepColumns:
    """Deterministic, image-like (smooth, compressible) fake steps for tests and benchmarks."""
    rng = np.random.default_rng(seed * 1_000_003 + start_step)
    images = {}
    for cam, (h, w, c) in spec.cameras.items():
        yy, xx = np.mgrid[0:h, 0:w]
        frames = np.empty((n, h, w, c), np.uint8)
        for i in range(n):
            k = start_step + i + seed * 7
            base = (xx * 2 + yy + 3 * k) % 256
            for ch in range(c):
                frames[i, :, :, ch] = (base + 40 * ch + (k * (ch + 1)) % 50) % 256
            cx, cy = (k * 3) % w, (k * 5) % h  # a moving blob, like the arm
            frames[i, max(0, cy - 6):cy + 6, max(0, cx - 6):cx + 6] = 255
        images[cam] = frames
    tok = ActionTokenizer(spec.action_low, spec.action_high, spec.action_bins)
    action = rng.uniform(-1, 1, (n, spec.action_dim)).astype(np.float32)
    return StepColumns(
        images=images,
        proprio=rng.normal(size=(n, spec.proprio_dim)).astype(np.float32),
        action=action,
        action_tokens=tok.encode(action),
        logprob=-rng.uniform(0, 5, n).astype(np.float32),
        policy_version=np.full(n, policy_version, np.int64),
        intervention=np.zeros(n, bool),
        timestamp=t0 + 0.1 * (start_step + np.arange(n, dtype=np.float64)),
    )

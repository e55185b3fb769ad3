"""What updates do to an exported actor's bytes, for benchmarks/fleet.py's delta figures.

Three kinds of new version, each made from the previous version's ONNX file:

- ``ppo``: a typical PPO update. The image encoder is frozen (it is not trained, and the
  export carries it unchanged), so only the head moves: ``PPO_FLIP`` of each INT8 head weight
  tensor's entries move by one quantization step (+1 or -1; in the export's weight-only INT8 a
  small float change moves a weight across a rounding boundary, or leaves it), and every fp32
  head tensor (the per-channel scales, biases, norms, embeddings) is scaled by
  1 + ``PPO_FP32_NOISE`` x N(0, 1), so that all of their bytes change, as the learner's
  optimizer step changes every float;
- ``head``: the head retrained from scratch (a new imitation run on the same frozen encoder):
  every head tensor's entries shuffled (the same value distribution, every byte moved);
- ``all``: every weight tensor of the file shuffled, the encoder's too (another architecture
  or encoder: what no delta can help).

"Head" means the initializers whose names start with ``head/`` (``vlac actor export`` prefixes
the head graph so); a graph without them (the toy artifact) counts every initializer as head.
Tensors of fewer than ``MIN_ELEMENTS`` entries (shape constants, axes) are left alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PPO_FLIP = 0.02
PPO_FP32_NOISE = 1e-3
MIN_ELEMENTS = 16
KINDS = {"ppo": "typical PPO update", "head": "head retrained (encoder frozen)",
         "all": "full retrain (every weight changed)"}


def _weights(model, head_only: bool):
    """The initializers an update may change (see the module docstring)."""
    from onnx import TensorProto

    inits = list(model.graph.initializer)
    has_head = any(t.name.startswith("head/") for t in inits)
    kinds = (TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT)
    for t in inits:
        if t.data_type not in kinds or (head_only and has_head and
                                        not t.name.startswith("head/")):
            continue
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        if n >= MIN_ELEMENTS:
            yield t


def _ppo(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if a.dtype == np.float32:
        return (a * (1 + PPO_FP32_NOISE * rng.standard_normal(a.shape))).astype(np.float32)
    info = np.iinfo(a.dtype)
    flat = a.astype(np.int16).reshape(-1)
    pick = rng.random(flat.size) < PPO_FLIP
    flat[pick] += rng.choice(np.array([-1, 1], np.int16), int(pick.sum()))
    return np.clip(flat, info.min, info.max).astype(a.dtype).reshape(a.shape)


def changed(source: Path, out: Path, kind: str, version: int, seed: int) -> Path:
    """``source`` after an update of ``kind`` (``KINDS``), as ``version``, written to ``out``."""
    import onnx
    from onnx import numpy_helper

    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: use one of {sorted(KINDS)}")
    model = onnx.load(str(source))
    rng = np.random.default_rng(seed)
    for t in _weights(model, head_only=kind != "all"):
        a = numpy_helper.to_array(t)
        new = _ppo(a, rng) if kind == "ppo" else rng.permutation(a.reshape(-1)).reshape(a.shape)
        t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), t.name))
    set_version(model, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def set_version(model, version: int) -> None:
    """Rewrite the vlac metadata's policy_version (what the robot's health check compares)."""
    prop = next((p for p in model.metadata_props if p.key == "vlac"), None)
    if prop is None:
        raise SystemExit("the artifact has no vlac metadata; export it with `vlac actor "
                         "export`")
    meta = json.loads(prop.value)
    meta["policy_version"] = version
    prop.value = json.dumps(meta)


def delta_sizes(source: Path, scratch: Path, max_ratio: float) -> list[dict]:
    """For each kind: the full artifact's bytes, its delta's bytes and the time to make it,
    and whether the publisher writes that delta (``max_ratio``, its ``delta_max_ratio``)."""
    import time

    from vlac.shared import delta

    base = source.read_bytes()
    rows = []
    for i, (kind, what) in enumerate(KINDS.items()):
        new = changed(source, scratch / f"{kind}.onnx", kind, 2, seed=100 + i).read_bytes()
        t = time.perf_counter()
        blob = delta.make(base, new)
        made = time.perf_counter() - t
        t = time.perf_counter()
        if delta.apply(base, blob, len(new)) != new:
            raise RuntimeError(f"the {kind} delta does not rebuild its artifact")
        rows.append({"kind": kind, "what": what, "full_b": len(new), "delta_b": len(blob),
                     "make_s": made, "apply_s": time.perf_counter() - t,
                     "written": len(blob) <= max_ratio * len(new)})
    return rows

"""The episode store's file format: one Parquet table per chunk, a row per step.

See ``vlac.cloud.store.episodes`` for the layout on disk and the columns; everything here converts
between a chunk's numpy columns and that table, and needs nothing but pyarrow to read.

``vectors_to_arrow`` and ``arrow_to_numpy`` are the one codec between numpy (T, D) arrays and
Arrow list columns; the store and the LeRobot export/import both use them.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from vlac.shared.episode import StepColumns

IMAGE_PREFIX = "image."
META_KEY = b"vlac"


def vectors_to_arrow(arr: np.ndarray, dtype: Any = None) -> pa.Array:
    """A (T, D) array as a ``fixed_size_list<D>`` Arrow array of T rows (cast to ``dtype``
    first when given). The inverse of ``arrow_to_numpy``."""
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"expected a (T, D) array with D >= 1, got shape {arr.shape}; "
                         "reshape it to one vector per row first")
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


def arrow_to_numpy(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow column as numpy: a list column (fixed_size_list, list or large_list, every row
    the same length D) as a (T, D) array, any other column as a (T,) array. Chunked columns are
    combined first; the values keep their Arrow type (cast with ``.astype`` if needed)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    kind = arr.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind)
            or pa.types.is_large_list(kind)):
        return arr.to_numpy(zero_copy_only=False)
    if arr.null_count:
        raise ValueError(f"{arr.null_count} of {len(arr)} rows of the {kind} column are null; "
                         "fill them in before converting")
    if pa.types.is_fixed_size_list(kind):
        width = kind.list_size
    else:
        lengths = np.unique(arr.value_lengths().to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise ValueError(f"the {kind} column has rows of lengths {lengths.tolist()}; "
                             "a (T, D) array needs every row to have the same length")
        width = int(lengths[0]) if len(lengths) else 0
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width)


def _images_column(frames: np.ndarray) -> pa.Array:
    t = frames.shape[0]
    per = int(np.prod(frames.shape[1:]))
    buf = pa.py_buffer(np.ascontiguousarray(frames))
    offsets = pa.py_buffer(np.arange(0, (t + 1) * per, per, dtype=np.int32))
    return pa.BinaryArray.from_buffers(pa.binary(), t, [None, offsets, buf])


def steps_to_table(cols: StepColumns, first_step: int, meta: dict[str, Any]) -> pa.Table:
    n = len(cols)
    arrays = {
        "step": pa.array(np.arange(first_step, first_step + n, dtype=np.int64)),
        "timestamp": pa.array(cols.timestamp),
        "proprio": vectors_to_arrow(cols.proprio),
        "action": vectors_to_arrow(cols.action),
        "action_tokens": vectors_to_arrow(cols.action_tokens),
        "logprob": pa.array(cols.logprob),
        "policy_version": pa.array(cols.policy_version),
        "intervention": pa.array(cols.intervention),
    }
    fields = [pa.field(k, v.type) for k, v in arrays.items()]
    for cam, frames in sorted(cols.images.items()):
        arrays[IMAGE_PREFIX + cam] = _images_column(frames)
        fields.append(pa.field(IMAGE_PREFIX + cam, pa.binary(),
                               metadata={b"shape": json.dumps(list(frames.shape[1:])).encode()}))
    schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta).encode()})
    return pa.Table.from_arrays(list(arrays.values()), schema=schema)


def table_to_steps(table: pa.Table) -> StepColumns:
    def fixed(name: str, dtype: str) -> np.ndarray:
        return arrow_to_numpy(table.column(name)).astype(dtype)

    images = {}
    for f in table.schema:
        if f.name.startswith(IMAGE_PREFIX):
            shape = json.loads(f.metadata[b"shape"])
            raw = table.column(f.name).combine_chunks()
            data = np.frombuffer(raw.buffers()[2], np.uint8)
            off = np.frombuffer(raw.buffers()[1], np.int32)[raw.offset:raw.offset + len(raw) + 1]
            images[f.name[len(IMAGE_PREFIX):]] = (
                data[off[0]:off[-1]].reshape(len(raw), *shape).copy())
    return StepColumns(
        images=images,
        proprio=fixed("proprio", "float32"),
        action=fixed("action", "float32"),
        action_tokens=fixed("action_tokens", "int32"),
        logprob=table.column("logprob").to_numpy().astype(np.float32),
        policy_version=table.column("policy_version").to_numpy().astype(np.int64),
        intervention=table.column("intervention").to_numpy(zero_copy_only=False).astype(bool),
        timestamp=table.column("timestamp").to_numpy().astype(np.float64),
    )

"""The episode store's file format: one Parquet table per chunk, a row per step.

See ``vlac.cloud.store.episodes`` for the layout on disk and the columns; everything here converts
between a chunk's numpy columns and that table, and needs nothing but pyarrow to read.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from vlac.shared.episode import StepColumns

IMAGE_PREFIX = "image."
META_KEY = b"vlac"


def _fixed_list(arr: np.ndarray) -> pa.Array:
    arr = np.ascontiguousarray(arr)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])


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
        "proprio": _fixed_list(cols.proprio),
        "action": _fixed_list(cols.action),
        "action_tokens": _fixed_list(cols.action_tokens),
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
        col = table.column(name).combine_chunks()
        width = col.type.list_size
        return col.flatten().to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, width)

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

"""What the learner's processes share (``torchrun --nproc_per_node N ... learner run``).

Rank 0 chooses the episodes, asks the critic and broadcasts what it got as JSON (bytes, never
pickle); every rank then prepares the same batch and trains on its share of each minibatch
(DeepSpeed averages the gradients). With one process every helper is a no-op.
"""

from __future__ import annotations

import json
from typing import Any

import torch


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def broadcast_json(obj: Any, rank: int) -> Any:
    """Rank 0's JSON-serialisable ``obj`` on every rank (bytes, never pickle)."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    data = json.dumps(obj).encode() if rank == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8)
    if rank == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.numpy()))


def mean_over_ranks(x: float) -> float:
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def shutdown() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits.

    Left to interpreter exit, gloo's worker threads can be destroyed while still joinable and
    the process aborts ("terminate called without an active exception", exit -6) after its
    work is done: a flaky non-zero exit for a run that succeeded. One process keeps its group,
    so that several learners in one process (tests, benchmarks) reuse DeepSpeed's.
    """
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return
    dist.barrier()
    dist.destroy_process_group()

"""Ingest shards: which of N ingest processes a robot streams to.

A robot's home shard is a stable hash of its id modulo the number of shards (the same on every
host, release and Python process, unlike ``hash()``), unless its config pins one. The robot
(``vlac.edge.transport.sender``) and ingest (``vlac.cloud.ingest.service``, for its logs) both
use ``home_shard``; nothing else depends on it, because every shard may store any robot's
chunks: the episode store keeps them exactly once whichever shard writes them.
"""

from __future__ import annotations

import hashlib


def home_shard(robot_id: str, n_shards: int) -> int:
    """The shard index in ``[0, n_shards)`` that ``robot_id`` belongs to by default."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    digest = hashlib.sha256(robot_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_shards


def parse_shard(text: str) -> tuple[int, int] | None:
    """``"K/N"`` -> (K, N) with 0 <= K < N; ``""`` -> None. Raises ValueError otherwise."""
    if not text:
        return None
    k, sep, n = text.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise ValueError(f"{text!r} is not a shard: give K/N with 0 <= K < N, e.g. 0/2")
    return int(k), int(n)

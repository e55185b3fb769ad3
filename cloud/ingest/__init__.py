"""Ingest: robots' chunks in, validated, deduplicated and durable in the store, acks out.

``service`` holds ``Ingest`` (usable in a thread or as the `vlac ingest serve` process) and
``IngestConfig``. Imports no torch.
"""

from vlac.cloud.ingest.service import Ingest, IngestConfig

__all__ = ["Ingest", "IngestConfig"]

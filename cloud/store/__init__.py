"""The episode store: what robots recorded, durable and exactly once.

``EpisodeStore`` (``episodes``) writes chunks, completes episodes and reads them back;
``staging`` holds the rules a chunk must keep with its episode; ``parquet`` the file format;
``cli`` is `vlac store ls | show | gc`; ``lerobot`` exports to and imports from the
LeRobotDataset v3.0 layout. Imports no torch (an import-linter contract keeps it so).
"""

from vlac.cloud.store.episodes import ChunkWrite, Episode, EpisodeStore, StoreBusy

__all__ = ["ChunkWrite", "Episode", "EpisodeStore", "StoreBusy"]

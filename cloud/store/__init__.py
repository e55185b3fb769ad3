"""The episode store: what robots recorded, durable and exactly once.

``open_episode_store(root)`` (``location``) opens one by its root: a folder gives an
``EpisodeStore`` (``episodes``), an ``s3://`` URI an ``S3EpisodeStore`` (``s3``); both write
chunks, complete episodes and read them back with the same methods, sharing their index and
rules (``base``). ``staging`` holds the rules a chunk must keep with its episode; ``parquet``
the file format; ``cli`` is `vlac store ls | show | gc`; ``lerobot`` exports to and imports
from the LeRobotDataset v3.0 layout. Imports no torch (an import-linter contract keeps it so).
"""

from vlac.cloud.store.base import ChunkWrite, Episode, StoreBusy, StoreUnavailable
from vlac.cloud.store.episodes import EpisodeStore
from vlac.cloud.store.location import open_episode_store, store_location

__all__ = ["ChunkWrite", "Episode", "EpisodeStore", "StoreBusy", "StoreUnavailable",
           "open_episode_store", "store_location"]

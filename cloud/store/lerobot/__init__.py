"""Export store episodes as a LeRobotDataset v3.0 folder, and import such a folder back.

LeRobot itself is not a dependency: the format is written and read with pyarrow, pandas,
Pillow and PyAV, following the layout and metadata of ``lerobot.datasets`` (codebase version
``v3.0``) so that ``LeRobotDataset(repo_id, root=OUT)`` can open an export (image mode checked
against LeRobot 0.4.4 in an environment of its own; it cannot be installed beside this
project). Both modes: *image* (frames embedded in the data Parquet files as PNG, lossless) and
*video* (each camera's frames in MP4 files, AV1 or H.264 in yuv420p, LeRobot's default; lossy).
Timestamps are LeRobot's ``frame_index / fps``; the recorded ones travel in
``complementary_info.timestamp_measured``.

What it offers:

- ``export_lerobot(store, out_dir, ...)`` and ``import_lerobot(in_dir, store, ...)``;
- ``read_info(folder)``: a dataset's meta/info.json, checked for what import needs;
- ``lerobot_episode_id(name, index)``: the store id an imported episode gets;
- ``LeRobotFormatError``: a folder it cannot read, with the problem and the fix;
- ``LeRobotExportConfig``/``export_main`` and ``LeRobotImportConfig``/``import_main``:
  `vlac demos export` and `vlac demos import`.

Modules: ``format`` (the layout, the feature mapping and info.json), ``export``, ``stats``
(LeRobot's per-episode and dataset statistics), ``video`` (the MP4 files, with PyAV),
``importer`` (what an import accepts and fills in) and ``cli``.
"""

from vlac.cloud.store.lerobot.cli import (
    LeRobotExportConfig,
    LeRobotImportConfig,
    export_main,
    import_main,
)
from vlac.cloud.store.lerobot.export import export_lerobot
from vlac.cloud.store.lerobot.format import LeRobotFormatError, lerobot_episode_id, read_info
from vlac.cloud.store.lerobot.importer import import_lerobot

__all__ = [
    "LeRobotExportConfig",
    "LeRobotFormatError",
    "LeRobotImportConfig",
    "export_lerobot",
    "export_main",
    "import_lerobot",
    "import_main",
    "lerobot_episode_id",
    "read_info",
]

"""Getting episodes off the robot: numpy and bytes only, the robot loop never waits on it.

- ``Spool``, ``SpoolFull``: chunks on disk, fsynced before they count, until acknowledged;
- ``EpisodeRecorder``: cuts an episode into chunks and spools them;
- ``Sender``, ``SenderConfig``, ``SenderError``: the background thread that ships spooled
  chunks to ingest (CURVE DEALER, handshake, acknowledgements, heartbeats);
- ``stream``: `vlac edge synthetic`, synthetic episodes through all of the above.
"""

from vlac.edge.transport.recorder import EpisodeRecorder
from vlac.edge.transport.sender import Sender, SenderConfig, SenderError
from vlac.edge.transport.spool import Spool, SpoolFull

__all__ = ["EpisodeRecorder", "Sender", "SenderConfig", "SenderError", "Spool", "SpoolFull"]

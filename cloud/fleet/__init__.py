"""The fleet: which version each robot should run, and how it gets there.

``state`` is ``FleetState`` (SQLite: versions, production, canaries, pins, groups, the audit
log, heartbeats); ``publisher`` exports, signs and uploads versions and announces signed
assignments over ZeroMQ XPUB. Imports no torch at module level.
"""

from vlac.cloud.fleet.state import FleetState

__all__ = ["FleetState"]

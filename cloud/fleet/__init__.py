"""The fleet: which version each robot should run, and how it gets there.

``state`` is ``FleetState`` (versions, production, canaries, pins, groups, the audit log,
heartbeats) in SQLite by default or in PostgreSQL (``open_fleet_state`` picks by the fleet
URL; ``schema`` holds the tables, migrations and transactions); ``publisher`` exports, signs
and uploads versions and announces signed assignments over ZeroMQ XPUB. Imports no torch at
module level.
"""

from vlac.cloud.fleet.state import FleetState, open_fleet_state

__all__ = ["FleetState", "open_fleet_state"]

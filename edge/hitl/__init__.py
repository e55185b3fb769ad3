"""Human in the loop on the robot.

- ``Operator`` and its commands ``TakeOver``, ``RequestReset``, ``ReturnTo``;
- operators: ``ScriptedExpert`` (the stand-in for a person in simulation), ``KeyboardTeleop``,
  ``SpaceMouseTeleop`` (with ``Recorded`` streams for tests), ``StallWatch`` (hands over or
  returns when the critic's progress stalls);
- ``CriticProgress``: the critic service's progress for ``StallWatch``, never blocking.
"""

from vlac.edge.hitl.operator import (
    KeyboardTeleop,
    Operator,
    Recorded,
    RequestReset,
    ReturnTo,
    ScriptedExpert,
    SpaceMouseTeleop,
    StallWatch,
    TakeOver,
)
from vlac.edge.hitl.progress import CriticProgress

__all__ = ["CriticProgress", "KeyboardTeleop", "Operator", "Recorded", "RequestReset",
           "ReturnTo", "ScriptedExpert", "SpaceMouseTeleop", "StallWatch", "TakeOver"]

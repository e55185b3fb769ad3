"""The robot side: no torch, ever (an import-linter contract checks it).

- ``vlac.edge.robots``: the Robot interface, the robot types by name (Meta-World, synthetic,
  and any a package registers under the ``vlac.robots`` entry-point group);
- ``vlac.edge.transport``: the durable spool, the sender thread (CURVE DEALER to ingest), the
  episode recorder, and the synthetic stream (`vlac edge synthetic`);
- ``vlac.edge.hitl``: human in the loop: operators (teleop, scripted expert), the stall watch
  and the critic's progress it asks;
- ``agent.run_episode``: one episode: observe, operator or policy, act, record;
- ``policy`` and ``runtime``: the random and scripted policies, the ONNX Runtime actor;
- ``updater``: signed weight updates from the publisher, swapped in between episodes;
  ``fetch``: how a version's bytes arrive (a delta against the running version, or whole);
- ``process``: the edge process, `vlac edge run --robot.type NAME` (``EdgeAgentConfig``,
  ``main``).
"""

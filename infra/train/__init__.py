"""`vlac train`: the whole loop on one machine, the README's main job.

1. **Prepare** (``prepare``; only what is not cached in ``--workdir``): CURVE keys for ingest
   and robots, the publisher's signing key, scripted-expert demonstrations of the tasks, the
   critic, the ~30% imitation actor (few demonstrations per task, learnt on its INT8 image
   encoder), and its fp32 and INT8 exports, one of them (``--precision``, int8 by default)
   published as version 0.
2. **Run** (``processes``, on ``launch.Launcher``, the launcher `vlac stack` uses too) every
   part as its own process on loopback, as across machines: ingest (episodes into the store,
   heartbeats into the fleet state), the critic service, the publisher's announcer, the PPO
   learner (critic rewards, demonstration replay, publishes every ``--publish-every``
   versions) and one simulated robot per task (the actor under ONNX Runtime, weight
   updater). Human-guided exploration is on by default: the simulated operator takes over
   when the critic's progress stalls, to the end of the episode, and the learner
   behaviour-clones its takeovers (``--no-hitl.guide-on-stall`` turns it off; the operator's
   and the learner's settings are ``--hitl.operator.*`` and ``--hitl.bc.*``, the sections of
   ``vlac.shared.hitl`` that `vlac edge run` and `vlac learner run` take as ``--operator.*``
   and ``--bc.*``). A live line (``watch``) shows episodes, success rate, policy versions and
   rewards.
3. **Report** (``report``) in ``WORKDIR/report/``: success vs episodes per task
   (``success.png``), versions pushed and when, throughput, interventions, the critic's VOC,
   PPO's mean importance weight and (``--final-eval N``: 20, or 10 with ``--quick``) the
   starting and the final policy, greedy, on the same N fixed evaluation layouts per task
   with their paired difference, as ``report.md`` + ``report.json``.

The console (``logs``) shows the job's own lines and the live status; third-party logs and
warnings, and what the processes print, go to ``WORKDIR/logs/`` (``vlac -v train`` shows
them on the console). Ctrl-C (or SIGTERM) stops every process cleanly (robots finish their
step and flush their spools; the learner checkpoints). Running it again resumes: the store,
spools, learner checkpoint and fleet state are all in the workdir, and ``--episodes`` bounds
the total.

Offers ``TrainConfig`` and ``main(cfg)`` (the CLI's ``vlac train``), ``HitlConfig``,
``TASKS`` / ``QUICK_TASKS``, and ``solo_outcomes`` / ``rolling`` for the report's success
curves.
"""

from vlac.infra.train.config import QUICK_TASKS, TASKS, Paths, TrainConfig
from vlac.infra.train.job import main
from vlac.infra.train.report import rolling, solo_outcomes
from vlac.shared.hitl import HitlConfig

__all__ = ["QUICK_TASKS", "TASKS", "HitlConfig", "Paths", "TrainConfig", "main", "rolling",
           "solo_outcomes"]

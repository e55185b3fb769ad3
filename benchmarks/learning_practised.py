"""The learning benchmark's final policies on the layouts they practised, beside the held-out
ones the benchmark's own final evaluation uses.

Each training robot draws its layouts from one Meta-World pool (``MT1(task, seed)``: 50
layouts per task and seed), in an order its seed fixes; the final evaluation draws from
another pool (``EVAL_SEED``). This evaluates the saved final actor of every variant
(``WORK/<variant>-s<seed>/actor.pt``; the frozen control's is the starting policy) on the
first ``--layouts`` layouts its training robots drew (with ``--layout-repeats K`` in
training, layout j is group j's), greedily and sampled at ``--temperature`` (noise reseeded
per layout, the same for every variant), paired with the frozen control:

    python benchmarks/learning_practised.py --work .cache/bench/learning-start-200 --seed 0 \
        --tasks button-press-v3,drawer-open-v3

It ends with ``practised_vs_frozen=<points>`` for the first variant given (greedy).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
from learning_report import MODES
from learning_run import Collect, robot_seed


def practised_rows(actor_path: Path, variant: str, seed: int, tasks: list[str], layouts: int,
                   temperature: float, max_steps: int) -> list[dict]:
    """One row per (mode, task, layout): the actor on its training robots' first layouts."""
    from vlac.cloud.actor.model import TorchActor
    from vlac.edge.agent import run_episode
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
    from vlac.infra.evaluate import ActorPolicy

    actor = TorchActor.load(actor_path)
    rows = []
    for mode in MODES:
        for ti, t in enumerate(tasks):
            # the training robot's seed: the same pool, in the same order
            cfg = MetaWorldRobotConfig(task=t, seed=robot_seed(seed, ti), max_steps=max_steps)
            with MetaWorldRobot(cfg) as robot:
                for i in range(layouts):
                    actor.rng = np.random.default_rng([7, seed, ti, i])
                    policy = ActorPolicy(actor, temperature, greedy=mode == "greedy",
                                         mean=mode == "mean")
                    res = run_episode(robot, policy, lambda _: Collect(keep=False))
                    rows.append({"variant": variant, "seed": seed, "task": t, "mode": mode,
                                 "layout": i, "success": bool(res.success)})
    return rows


def paired(rows: list[dict], variant: str, mode: str) -> tuple[float, float, int]:
    """Mean and standard error of variant - frozen, in points, over (task, layout)."""
    key = {(r["variant"], r["mode"], r["task"], r["layout"]): r["success"] for r in rows}
    d = [key[(variant, mode, t, i)] - key[("frozen", mode, t, i)]
         for (v, m, t, i) in key if v == variant and m == mode]
    if len(d) < 2:
        return float("nan"), float("nan"), len(d)
    return 100 * float(np.mean(d)), 100 * float(np.std(d, ddof=1) / np.sqrt(len(d))), len(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the benchmark's --work folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default="ppo-critic,ppo-sparse",
                    help="variants to evaluate beside the frozen control")
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--layouts", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--out", default=None,
                    help="JSON of the rows (default: WORK/practised-sSEED.json)")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    tasks, variants = a.tasks.split(","), a.variants.split(",")
    work = Path(a.work)
    rows = []
    for v in ["frozen", *variants]:
        path = work / f"{v}-s{a.seed}" / "actor.pt"
        if not path.exists():
            raise SystemExit(f"{path} is missing: run benchmarks/learning.py with --work "
                             f"{work} and this variant and seed first")
        rows += practised_rows(path, v, a.seed, tasks, a.layouts, a.temperature, a.max_steps)
        by_mode = {m: np.mean([r["success"] for r in rows if r["variant"] == v and
                               r["mode"] == m]) for m in MODES}
        print(f"{v}: practised layouts, " + ", ".join(f"{m} {s:.0%}" for m, s in
                                                       by_mode.items()), flush=True)
    for v in variants:
        for m in MODES:
            mean, se, n = paired(rows, v, m)
            print(f"{v} vs frozen, {m}, practised layouts: {mean:+.0f} ± {se:.0f} (n={n})")
    Path(a.out or work / f"practised-s{a.seed}.json").write_text(json.dumps(rows))
    print(f"practised_vs_frozen={paired(rows, variants[0], 'greedy')[0]:+.1f}")


if __name__ == "__main__":
    main()

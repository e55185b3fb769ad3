"""The learning benchmark's saved final policies decoded three ways on its held-out evaluation
layouts: the argmax (greedy), a sample at the rollout temperature, and the mean bin of each
dimension (``TorchActor.mean_tokens``).

The benchmark's own final evaluation does this for runs made since the mean-bin mode
exists; this re-evaluates the saved actors of earlier runs
(``WORK/<variant>-s<seed>/actor.pt``; the frozen control's is the starting policy) with the
same layouts and noise (``learning_run.final_evaluation``), paired with the frozen control:

    python benchmarks/learning_decode.py --work .cache/bench/learning-big --seeds 0,1 \\
        --variants ppo-critic,ppo-sparse,ppo-oracle --action-repeat 5

It ends with ``mean_vs_frozen=<points> greedy_vs_frozen=<points>`` for the first variant
given, over the seeds given.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

from learning_report import MODES, final_eval_table, paired_points
from learning_run import final_evaluation

from vlac.shared.tasks import HEADLINE_TASKS


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the learning benchmark's --work folder")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--variants", default="ppo-critic,ppo-sparse",
                    help="variants to evaluate beside the frozen control")
    ap.add_argument("--tasks", default=",".join(HEADLINE_TASKS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--final-eval", type=int, default=20, help="layouts per task")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--action-repeat", type=int, default=1,
                    help="as the run was made with (its run.json says)")
    ap.add_argument("--out", default=None, help="JSON of the rows (default: WORK/decode.json)")
    a = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore")
    import torch
    from rich.console import Console

    from vlac.cloud.actor.model import TorchActor

    torch.set_num_threads(1)
    console = Console(width=120)
    tasks, variants, modes = a.tasks.split(","), a.variants.split(","), a.modes.split(",")
    work = Path(a.work)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        for v in ["frozen", *variants]:
            path = work / f"{v}-s{seed}" / "actor.pt"
            if not path.exists():
                raise SystemExit(f"{path} is missing: run benchmarks/learning.py with --work "
                                 f"{work} and this variant and seed first")
            actor = TorchActor.load(path)
            args = {"variant": v, "seed": seed, "tasks": tasks, "final_eval": a.final_eval,
                    "max_steps": a.max_steps, "action_repeat": a.action_repeat,
                    "temperature": a.temperature}
            rows += final_evaluation(args, actor, actor.version, modes)
            console.print(f"{v} seed {seed}: evaluated", style="dim")
    for m in modes:
        console.print(final_eval_table(rows, [*variants, "frozen"], tasks, m))
    Path(a.out or work / "decode.json").write_text(json.dumps(rows))
    first = variants[0]
    print(f"mean_vs_frozen={paired_points(rows, first, 'frozen', 'mean'):+.1f} "
          f"greedy_vs_frozen={paired_points(rows, first, 'frozen', 'greedy'):+.1f}")
    return rows


if __name__ == "__main__":
    main()

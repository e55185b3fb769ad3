"""A control for the learning benchmark's greedy figure: the starting policy moved as far as
RL moved it, in a random direction.

For a learner's saved final actor (``WORK/<variant>-s<seed>/actor.pt``) this takes the
change RL made to each weight tensor of the start (``WORK/frozen-s<seed>/actor.pt``) and
makes ``--draws`` copies of the start moved by the same norm per tensor in random
directions. Each is evaluated like the final policies (``learning_run.final_evaluation``:
the held-out layouts, greedy, sampled and by mean bin), paired with the start. If random
moves of that size cost the greedy policy as much as RL's, the greedy drop says how brittle
the start's argmax is, not what RL learnt.

    python benchmarks/learning_perturb.py --work .cache/bench/learning-big --seeds 0,1 \\
        --variant ppo-critic --action-repeat 5

Ends with ``random_vs_frozen=<points> learned_vs_frozen=<points>`` (greedy, over seeds and
draws).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
from learning_report import MODES, final_eval_table, paired_points
from learning_run import final_evaluation

from vlac.shared.tasks import HEADLINE_TASKS


def matched_random_move(start_path: Path, learned, seed: int):
    """The start (loaded afresh from ``start_path``) moved, tensor by tensor, by the norm of
    ``learned - start`` in a random direction (tensors RL left alone stay)."""
    import torch

    from vlac.cloud.actor.model import TorchActor

    gen = torch.Generator().manual_seed(seed)
    moved = TorchActor.load(start_path)
    learned_state = learned.model.state_dict()
    with torch.no_grad():
        for name, p in moved.model.state_dict().items():
            if not p.is_floating_point():
                continue
            norm = (learned_state[name] - p).norm()
            if norm == 0:
                continue
            d = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.add_(d * (norm / d.norm()))
    return moved


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the learning benchmark's --work folder")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--variant", default="ppo-critic", help="the learner whose move is matched")
    ap.add_argument("--draws", type=int, default=2, help="random directions per seed")
    ap.add_argument("--tasks", default=",".join(HEADLINE_TASKS))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--final-eval", type=int, default=20, help="layouts per task")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--action-repeat", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON of the rows (default WORK/perturb.json)")
    a = ap.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore")
    import torch
    from rich.console import Console

    from vlac.cloud.actor.model import TorchActor

    torch.set_num_threads(1)
    console = Console(width=120)
    tasks, modes, work = a.tasks.split(","), a.modes.split(","), Path(a.work)
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        paths = {v: work / f"{v}-s{seed}" / "actor.pt" for v in ("frozen", a.variant)}
        for p in paths.values():
            if not p.exists():
                raise SystemExit(f"{p} is missing: run benchmarks/learning.py with --work "
                                 f"{work} first")
        start, learned = TorchActor.load(paths["frozen"]), TorchActor.load(paths[a.variant])
        actors = {"frozen": start, "learned": learned}
        for k in range(a.draws):
            actors[f"random-{k}"] = matched_random_move(paths["frozen"], learned,
                                                        1000 * seed + k)
        for name, actor in actors.items():
            args = {"variant": name, "seed": seed, "tasks": tasks, "final_eval": a.final_eval,
                    "max_steps": a.max_steps, "action_repeat": a.action_repeat,
                    "temperature": a.temperature}
            rows += final_evaluation(args, actor, actor.version, modes)
            console.print(f"{name} seed {seed}: evaluated", style="dim")
    draws = [f"random-{k}" for k in range(a.draws)]
    for m in modes:
        console.print(final_eval_table(rows, ["learned", *draws, "frozen"], tasks, m))
    Path(a.out or work / "perturb.json").write_text(json.dumps(rows))
    random = np.mean([paired_points(rows, d, "frozen") for d in draws])
    print(f"random_vs_frozen={random:+.1f} "
          f"learned_vs_frozen={paired_points(rows, 'learned', 'frozen'):+.1f}")
    return rows


if __name__ == "__main__":
    main()

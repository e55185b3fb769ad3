"""Critic benchmark: the eval table on the default task split, and critic throughput.

Steps (each skipped when its output already exists, so a rerun only re-measures):
1. demonstrations for 10 training + 4 unseen Meta-World tasks (`vlac demos collect`:
   14 clean episodes per task at noise 0.1, 4 noisy ones at noise 0.8 that include failures);
2. `vlac critic train` on the 10 training tasks (2 episodes per task held out);
3. `vlac critic eval`: VOC on held-out episodes of the training tasks and on the unseen tasks
   (with and without the one-shot reference), negatives, done precision/recall;
4. throughput: critique() from raw 128x128 frames one pair per call against 64 pairs per
   call, and whole-episode rewards (image features once per frame), measured in this run.

    python benchmarks/critic.py [--workdir .cache/critic-bench] [--steps 3000]

Ends with ``voc_seen=<x> voc_unseen=<y> negatives_ok=<fraction> pairs_per_s=<z>``
(voc_unseen with the one-shot reference; pairs_per_s batched, from raw frames).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

OUT = Path(__file__).parent / "out"


def throughput(critic, frames, task: str, n_single: int = 32, batch: int = 64) -> dict:
    import numpy as np

    a, b = frames[:-1], frames[1:]
    idx = np.arange(min(len(a), batch))
    critic.critique([task], a[:1], b[:1])  # warm up
    t0 = time.perf_counter()
    for i in range(n_single):
        critic.critique([task], a[i % len(a)][None], b[i % len(b)][None])
    single = n_single / (time.perf_counter() - t0)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        critic.critique([task] * len(idx), a[idx], b[idx])
    batched = reps * len(idx) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        critic.episode_rewards(task, frames)
    episode = reps * (len(frames) - 1) / (time.perf_counter() - t0)
    return {"one_at_a_time": single, "batched": batched, "episode": episode}


def main(argv: list[str] | None = None) -> dict:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(".cache/critic-bench"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--episodes", type=int, default=14)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from vlac.cloud.critic.evaluate import CriticEvalConfig
    from vlac.cloud.critic.evaluate import main as evaluate
    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.critic.train import TRAIN_TASKS, UNSEEN_TASKS, CriticTrainConfig
    from vlac.cloud.critic.train import main as train
    from vlac.cloud.store.episodes import EpisodeStore
    from vlac.infra.demos import DemosCollectConfig
    from vlac.infra.demos import main as collect

    console = Console(width=110)
    store_root = args.workdir / "store"
    critic_dir = args.workdir / "critic"
    features = args.workdir / "features"
    tasks = TRAIN_TASKS + UNSEEN_TASKS
    if not (store_root / "episodes").exists() or not EpisodeStore(store_root).list_episodes():
        collect(DemosCollectConfig(tasks=tasks, episodes=args.episodes, noise=0.1, seed=0,
                                   store_root=store_root))
        collect(DemosCollectConfig(tasks=tasks, episodes=4, noise=0.8, seed=1,
                                   store_root=store_root))
    if not (critic_dir / "critic.pt").exists():
        train(CriticTrainConfig(store_root=store_root, out=critic_dir, features=features,
                                steps=args.steps))
    res = evaluate(CriticEvalConfig(store_root=store_root, critic=critic_dir / "critic.pt",
                                    out=OUT / "critic", features=features), console)
    critic = SmallVLACCritic.load(critic_dir / "critic.pt")
    store = EpisodeStore(store_root)
    info = next(e for e in store.list_episodes() if e["outcome"]["success"])
    frames = store.load_episode(info["robot_id"], info["episode_id"]).steps.images["corner"]
    tp = throughput(critic, frames, info["task"])
    table = Table(title="critic throughput (128x128 frames, CPU)")
    for col in ("mode", "pairs/s", "vs one at a time"):
        table.add_column(col)
    for k, v in tp.items():
        table.add_row(k.replace("_", " "), f"{v:.1f}", f"{v / tp['one_at_a_time']:.1f}x")
    console.print(table)
    s = res["summary"]
    unseen = s["voc_unseen_ref"] if s["voc_unseen_ref"] is not None else s["voc_unseen"]
    print(f"voc_seen={s['voc_seen']:.3f} voc_unseen={unseen:.3f} "
          f"negatives_ok={s['negatives_ok']:.3f} pairs_per_s={tp['batched']:.1f}")
    return {**s, **tp}


if __name__ == "__main__":
    main()
    sys.exit(0)

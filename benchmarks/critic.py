"""Critic benchmark: how the critic judges tasks it never trained on, per test task and per
training seed, and the critic's throughput.

Splits (``--split``):
- ``ml45`` (default): Meta-World ML45, trained on its 45 training tasks and tested on its 5
  test tasks (bin-picking, box-close, hand-insert, door-lock, door-unlock);
- ``headline``: the earlier 10 training and 4 unseen tasks (``critic.train.TRAIN_TASKS`` /
  ``UNSEEN_TASKS``), the critic the learning benchmark reads from ``.cache/critic-data``.

Steps (each skipped when its output already exists, so a rerun only re-measures):
1. episodes for every task of the split, once, into ``WORKDIR/store`` (`vlac demos collect`,
   with progress bars): 14 clean ones at noise 0.1, 4 noisy ones at noise 0.8 (some fail)
   and (ml45) 4 whose expert gives up within 60 steps (``--stop-after``: failures with some
   progress; 100 steps at most).
   Rewound demonstrations (ReWiND) are not made: the pair sampler already draws every
   reversed pair of every successful episode, which is what rewinding adds to pairs;
2. `vlac critic train` on the training tasks, once per seed (``WORKDIR/critic`` for seed 0,
   ``WORKDIR/critic-s<seed>`` for the others; 2 successful episodes per task held out);
3. `vlac critic eval` of each seed's critic: per task, direct VOC (the headline) and
   accumulated VOC, each with and without the one-shot reference, the AUC of final progress
   of successes against failures, static / reversed / mismatched-sentence rates, and done
   precision/recall at the threshold chosen on the training tasks;
4. throughput of the first seed's critic: critique() from raw 128x128 frames one pair per
   call against 64 pairs per call, and whole-episode rewards, measured in this run.

    python benchmarks/critic.py [--split ml45|headline] [--workdir DIR] [--seeds 2]

Ends with ``voc_seen=<x> voc_unseen=<y> negatives_ok=<fraction> pairs_per_s=<z>`` (first
seed; voc_unseen with the one-shot reference) and then ``voc_direct_test=<x> auc_test=<y>
ref_gain=<z> done_precision=<p> negatives_ok=<n> ref_gain_generic=<g>``: the test tasks'
means over tasks and seeds (ref_gain: direct VOC with the reference minus without;
done_precision at the threshold chosen on the training tasks, nan where no threshold
reaches precision 0.9 there or it calls no test frame done; negatives_ok: static and
reversed pairs of the test tasks judged right; ref_gain_generic: the reference's gain when
the sentence names no task, where the reference is all the critic has).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

OUT = Path(__file__).parent / "out"
WORKDIRS = {"ml45": Path(".cache/critic-ml45"), "headline": Path(".cache/critic-data")}
TEST_COLUMNS = ("voc_direct", "voc_direct_ref", "voc_generic", "voc_generic_ref", "voc",
                "voc_ref", "auc", "auc_ref", "static", "reversed", "mismatched")


def split_tasks(split: str) -> tuple[list[str], list[str]]:
    """(training tasks, test tasks) of a split."""
    from vlac.cloud.critic.train import TRAIN_TASKS, UNSEEN_TASKS
    from vlac.shared.tasks import ML45_TEST, ML45_TRAIN

    if split == "ml45":
        return list(ML45_TRAIN), list(ML45_TEST)
    return list(TRAIN_TASKS), list(UNSEEN_TASKS)


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


def critic_dir(work: Path, seed: int) -> Path:
    """Seed 0's critic is ``WORKDIR/critic``, the one the learning benchmark reads."""
    return work / ("critic" if seed == 0 else f"critic-s{seed}")


def collect_once(store_root: Path, tasks: list[str], episodes: int, noisy: int, stopped: int,
                 stop_after: int) -> None:
    """The split's episodes, unless the store already has every task's."""
    from vlac.cloud.store.episodes import EpisodeStore
    from vlac.infra.demos import DemosCollectConfig
    from vlac.infra.demos import main as collect

    if (store_root / "episodes").exists():
        have = {e.get("task_id") for e in EpisodeStore(store_root).list_episodes()}
        if set(tasks) <= have:
            return
    collect(DemosCollectConfig(tasks=tasks, episodes=episodes, noise=0.1, seed=0,
                               store_root=store_root))
    if noisy:
        collect(DemosCollectConfig(tasks=tasks, episodes=noisy, noise=0.8, seed=1,
                                   store_root=store_root))
    if stopped and stop_after:
        collect(DemosCollectConfig(tasks=tasks, episodes=stopped, noise=0.1, seed=2,
                                   max_steps=100,
                                   stop_after=stop_after, store_root=store_root))


def seed_table(results: dict[int, dict], test: list[str]):
    """One row per (test task, seed), then each test task's mean over seeds."""
    import numpy as np
    from rich.table import Table

    table = Table(title="test tasks, per training seed (ref: with the one-shot reference; "
                  "AUC: final progress, successes vs failures)")
    for col in ("task", "seed", "ok/failed", *TEST_COLUMNS):
        table.add_column(col)

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    for t in test:
        rows = [(s, r["voc"]["unseen"].get(t)) for s, r in results.items()]
        rows = [(s, row) for s, row in rows if row is not None]
        for s, row in rows:
            table.add_row(t, str(s), f"{row['episodes']}/{row['failed']}",
                          *[fmt(row[k]) for k in TEST_COLUMNS])
        means = [np.mean(v) if (v := [row[k] for _, row in rows if row[k] is not None])
                 else None for k in TEST_COLUMNS]
        table.add_row(t, "mean", "", *[fmt(m) for m in means], end_section=True)
    return table


def test_summary(results: dict[int, dict]) -> dict:
    """The issue-20 key numbers: means over seeds of each seed's test-task summary."""
    import numpy as np

    keys = {"voc_direct_test": "voc_unseen_direct", "auc_test": "auc_unseen",
            "ref_gain": "ref_gain_unseen", "done_precision": "done_precision_unseen",
            "negatives_ok": "negatives_ok_unseen", "done_recall": "done_recall_unseen",
            "voc_generic": "voc_unseen_generic", "voc_generic_ref": "voc_unseen_generic_ref"}
    out = {}
    for name, key in keys.items():
        vals = [r["summary"][key] for r in results.values() if r["summary"][key] is not None]
        if name == "done_precision":  # a threshold that calls nothing done has no precision
            vals = [r["summary"][key] for r in results.values()
                    if r["summary"][key] is not None and r["summary"]["done_recall_unseen"]]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    out["ref_gain_generic"] = out["voc_generic_ref"] - out["voc_generic"]
    return out


def main(argv: list[str] | None = None) -> dict:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=("ml45", "headline"), default="ml45")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="data, features and critics (default: .cache/critic-ml45, or "
                    ".cache/critic-data for the headline split)")
    ap.add_argument("--out", type=Path, default=None,
                    help="tables' JSON and plots (default benchmarks/out/critic-<split>)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--episodes", type=int, default=14, help="clean episodes per task")
    ap.add_argument("--noisy", type=int, default=4, help="noise-0.8 episodes per task")
    ap.add_argument("--stopped", type=int, default=None,
                    help="episodes per task whose expert gives up within --stop-after steps "
                    "(default 4 for ml45; 0 for headline, whose data predates them)")
    ap.add_argument("--stop-after", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=2, help="training seeds")
    ap.add_argument("--generic", type=float, default=0.0,
                    help="vlac critic train --generic: share of pairs whose sentence names no "
                    "task, the reference being the task")
    ap.add_argument("--feature-dropout", type=float, default=0.0,
                    help="dropout on the frozen image features in training (augmentation)")
    ap.add_argument("--image-grid", type=int, default=2,
                    help="image tokens per side (4: the whole cached grid)")
    ap.add_argument("--tasks", default=None, help="TRAIN/TEST comma-separated task ids "
                    "instead of the split's (a small subset: the benchmark's test)")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from vlac.cloud.critic.evaluate import CriticEvalConfig
    from vlac.cloud.critic.evaluate import main as evaluate
    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.critic.train import CriticTrainConfig
    from vlac.cloud.critic.train import main as train
    from vlac.cloud.store.episodes import EpisodeStore

    console = Console(width=140)
    train_tasks, test_tasks = split_tasks(args.split)
    if args.tasks:
        train_part, test_part = args.tasks.split("/")
        train_tasks, test_tasks = train_part.split(","), test_part.split(",")
    work = args.workdir or WORKDIRS[args.split]
    store_root, features = work / "store", work / "features"
    out_dir = args.out or OUT / f"critic-{args.split}"
    t0 = time.monotonic()
    stopped = args.stopped if args.stopped is not None else (4 if args.split == "ml45" else 0)
    collect_once(store_root, train_tasks + test_tasks, args.episodes, args.noisy, stopped,
                 args.stop_after)
    results: dict[int, dict] = {}
    for seed in range(args.seeds):
        out = critic_dir(work, seed)
        if not (out / "critic.pt").exists():
            train(CriticTrainConfig(store_root=store_root, out=out, features=features,
                                    steps=args.steps, tasks=train_tasks, seed=seed,
                                    generic=args.generic, image_grid=args.image_grid,
                                    feature_dropout=args.feature_dropout))
        results[seed] = evaluate(CriticEvalConfig(
            store_root=store_root, critic=out / "critic.pt", features=features,
            out=out_dir / f"s{seed}", seen_tasks=train_tasks,
            unseen_tasks=test_tasks, seed=seed), console)
    console.print(seed_table(results, test_tasks))
    critic = SmallVLACCritic.load(critic_dir(work, 0) / "critic.pt")
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
    key = test_summary(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(
        {"argv": sys.argv, "wall_s": time.monotonic() - t0, "train_tasks": train_tasks,
         "test_tasks": test_tasks, "key": key, "throughput": tp,
         "per_seed": {s: r["summary"] for s, r in results.items()}}, indent=1))
    s = results[0]["summary"]
    unseen = s["voc_unseen_ref"] if s["voc_unseen_ref"] is not None else s["voc_unseen"]
    print(f"voc_seen={s['voc_seen']:.3f} voc_unseen={unseen:.3f} "
          f"negatives_ok={s['negatives_ok']:.3f} pairs_per_s={tp['batched']:.1f}")
    print(f"voc_direct_test={key['voc_direct_test']:.3f} auc_test={key['auc_test']:.3f} "
          f"ref_gain={key['ref_gain']:+.3f} done_precision={key['done_precision']:.3f} "
          f"negatives_ok={key['negatives_ok']:.3f} "
          f"ref_gain_generic={key['ref_gain_generic']:+.3f}")
    return {**key, **tp, "results": results}


if __name__ == "__main__":
    main()
    sys.exit(0)

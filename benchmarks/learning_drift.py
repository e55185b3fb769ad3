"""How far RL moved the policy's tokens, and toward what: the learning benchmark's final actors
against its frozen start, on held-out demonstration states.

    python benchmarks/learning_drift.py .cache/bench/learning-big --seed 0

For each task, the last ``--episodes`` successful scripted demonstrations in the store (the
ones ``vlac actor pretrain --demos-per-task 2`` did not train on: it takes the first, by
episode id), every ``--every``-th state: each actor's token distribution there
(teacher-forced on the expert's tokens),

- its mean entropy per token and the probability of its argmax bin;
- how many bins its greedy tokens moved from the frozen start's (mean over dimensions);
- how far its greedy tokens and its distribution's mean bin are from the expert's tokens.

A learner whose greedy tokens move but come no closer to the expert's is moving without a
direction the demonstrations would recognise. Prints a table, writes
``<work>/drift-s<seed>.png`` and ends with
``greedy_shift_bins=<x> expert_gap_frozen=<y> expert_gap_change=<z> entropy_change=<w>``
(means over the tasks and the learner variants; change = learner minus frozen).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

TASKS = ("reach-v3", "button-press-v3", "drawer-open-v3", "push-v3")


def demo_states(store, actor, task: str, episodes: int, every: int, last: bool = True
                ) -> dict:
    """Features, proprio, sentence embeddings and expert tokens of the task's last (or, with
    ``last`` False, first: the ones pretraining used) ``episodes`` successful
    demonstrations in pretraining's order, every ``every``-th step."""
    infos = sorted((e for e in store.list_episodes() if e.get("task_id") == task and
                    e.get("source") == "demo" and e["outcome"]["success"]),
                   key=lambda e: e["episode_id"])
    infos = infos[-episodes:] if last else infos[:episodes]
    if not infos:
        raise SystemExit(f"no successful demonstrations of {task} in the store")
    cols: dict[str, list[np.ndarray]] = {"feat": [], "proprio": [], "tokens": [], "text": []}
    for e in infos:
        ep = store.load_episode(e["robot_id"], e["episode_id"])
        frames = ep.steps.images[actor.camera][::every]
        cols["feat"].append(actor.image_encoder.encode(frames).astype(np.float32))
        cols["proprio"].append(ep.steps.proprio[::every].astype(np.float32))
        cols["tokens"].append(ep.steps.action_tokens[::every].astype(np.int64))
        cols["text"].append(np.repeat(actor.text_encoder.encode([ep.task]), len(frames), 0))
    return {k: np.concatenate(v) for k, v in cols.items()}


def token_stats(actor, states: dict) -> dict[str, np.ndarray]:
    import torch

    t = {k: torch.from_numpy(v) for k, v in states.items()}
    with torch.no_grad():
        logits, _ = actor.model.actor_forward(t["text"], t["feat"], t["proprio"], t["tokens"])
    p = torch.softmax(logits.float(), -1)
    bins = torch.arange(p.shape[-1], dtype=torch.float32)
    return {"entropy": (-(p * torch.log(p + 1e-12)).sum(-1)).numpy(),
            "p_argmax": p.max(-1).values.numpy(), "greedy": logits.argmax(-1).numpy(),
            "mean_bin": (p * bins).sum(-1).numpy()}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x, w = np.arange(len(tasks)), 0.8 / len(variants)
    for i, v in enumerate(variants):
        mine = [next(r for r in rows if r["variant"] == v and r["task"] == t) for t in tasks]
        axes[0].bar(x + i * w, [r["shift"] for r in mine], w, label=v)
        axes[1].bar(x + i * w, [r["expert_gap"] for r in mine], w, label=v)
    for ax, title in zip(axes, ("greedy tokens moved from the start (bins)",
                                "greedy tokens from the expert's (bins)"), strict=True):
        ax.set_xticks(x + 0.4 - w / 2, [t.removesuffix("-v3") for t in tasks])
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="the learning benchmark's --work folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=".cache/critic-data/store",
                    help="demonstrations (the benchmark's --demo-store)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--episodes", type=int, default=6, help="held-out demos per task")
    ap.add_argument("--every", type=int, default=3, help="every k-th state")
    ap.add_argument("--pretrain-demos", type=int, default=2,
                    help="demos per task the start policy was pretrained on (the first ones)")
    a = ap.parse_args(argv)
    import torch

    from vlac.cloud.actor.model import TorchActor
    from vlac.cloud.store.episodes import EpisodeStore

    torch.set_num_threads(1)
    folders = sorted(p for p in a.work.glob(f"*-s{a.seed}") if (p / "actor.pt").exists())
    names = [p.name.removesuffix(f"-s{a.seed}") for p in folders]
    if "frozen" not in names:
        raise SystemExit(f"no frozen-s{a.seed}/actor.pt in {a.work}: run the benchmark with "
                         "its frozen control")
    actors = {n: TorchActor.load(p / "actor.pt") for n, p in zip(names, folders, strict=True)}
    store = EpisodeStore(a.store)
    rows = []
    for task in a.tasks.split(","):
        states = demo_states(store, actors["frozen"], task, a.episodes, a.every)
        seen = demo_states(store, actors["frozen"], task, a.pretrain_demos, a.every, last=False)
        fit = np.abs(token_stats(actors["frozen"], seen)["greedy"] - seen["tokens"]).mean()
        stats = {n: token_stats(actor, states) for n, actor in actors.items()}
        start = stats["frozen"]["greedy"]
        for n, s in stats.items():
            rows.append({"task": task, "variant": n, "entropy": float(s["entropy"].mean()),
                         "p_argmax": float(s["p_argmax"].mean()),
                         "shift": float(np.abs(s["greedy"] - start).mean()),
                         "expert_gap": float(np.abs(s["greedy"] - states["tokens"]).mean()),
                         "mean_gap": float(np.abs(s["mean_bin"] - states["tokens"]).mean()),
                         "states": len(start), "fit": float(fit)})
    print(f"{'task':<18}{'variant':<14}{'states':>7}{'entropy':>9}{'p(argmax)':>10}"
          f"{'moved':>8}{'greedy-expert':>15}{'mean-expert':>13}")
    for r in rows:
        print(f"{r['task']:<18}{r['variant']:<14}{r['states']:>7}{r['entropy']:>9.2f}"
              f"{r['p_argmax']:>10.3f}{r['shift']:>8.2f}{r['expert_gap']:>15.2f}"
              f"{r['mean_gap']:>13.2f}")
    fits = {r["task"]: r["fit"] for r in rows}
    print("the frozen start's greedy tokens from the expert's on its own pretraining demos: "
          + ", ".join(f"{t} {f:.2f}" for t, f in fits.items()) + " bins")
    plot(rows, a.work / f"drift-s{a.seed}.png")
    frozen = {r["task"]: r for r in rows if r["variant"] == "frozen"}
    learners = [r for r in rows if r["variant"] != "frozen"]
    print(f"greedy_shift_bins={np.mean([r['shift'] for r in learners]):.2f} "
          f"expert_gap_frozen={np.mean([r['expert_gap'] for r in frozen.values()]):.2f} "
          f"expert_gap_change="
          f"{np.mean([r['expert_gap'] - frozen[r['task']]['expert_gap'] for r in learners]):+.2f} "
          f"entropy_change="
          f"{np.mean([r['entropy'] - frozen[r['task']]['entropy'] for r in learners]):+.3f}")
    return rows


if __name__ == "__main__":
    main()

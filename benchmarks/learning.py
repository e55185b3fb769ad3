"""Learning benchmark: PPO from the ~30% imitation policy on four Meta-World tasks.

Four variants, measured in the same run from the same starting weights:

- ``critic``: PPO with the critic's dense progress rewards (progress since the first frame,
  plus 1 where the robot reports success: the learner's defaults), no human help (no
  demonstration replay, no takeovers);
- ``sparse``: the same PPO with the success reward alone (1 at the end of a successful
  episode), so the two differ by the critic's dense part;
- ``hitl``: critic rewards plus the human-in-the-loop protocols: offline demonstration replay
  (behaviour cloning on stored demos), and human-guided exploration triggered when the
  critic's progress stalls (``vlac.edge.hitl.operator.StallWatch``; the scripted expert stands in
  for the person and keeps control to the end of the episode (``--guide-steps``: fewer);
  its steps are marked interventions and only ever used for behaviour cloning, aggregated
  over the last ``--takeover-replay`` such episodes and trained with ``--bc-steps`` extra
  BC steps per update at ``--bc-lr``: HG-DAgger's protocol); with
  ``--hitl-return`` also return-and-explore: a failed episode's next attempt starts from its
  most promising saved state (the critic's best progress) once per failure (off by default:
  the restarted attempt inherits what is left of the simulator's step budget, and in #7's
  run G every restarted reach attempt hit that limit and failed);
- ``frozen``: the starting policy, never updated: the control. Every variant meets the same
  layouts in the same order (the robots' seeds), and the layouts differ in difficulty, so a
  variant's change from first to last window means something only against this one's.

Each variant runs in its own process (one torch thread): episodes are rolled out in
Meta-World with the learner's current weights (sampling at ``--temperature``, 1 by default),
stored in an episode store, and handed to ``vlac.cloud.learner.process.Learner.update`` every
``--episodes-per-update`` episodes (round-robin over tasks). The success rate is that of the
rollouts themselves (a rolling window of ``--window`` episodes per task), counting only what
the policy did alone: an episode the expert took over, or one restarted from a saved state,
counts as a failure. After training, each variant's final policy also acts greedily on
``--final-eval`` fixed evaluation layouts per task, the same for every variant and never
trained on; the second table gives those rates and each variant's paired difference from
the frozen control, which removes both the layout drift and the sampling noise of the
rollout windows.

    python benchmarks/learning.py                      # 4 tasks, 1 seed, 4 variants: ~100 min
    python benchmarks/learning.py --seeds 3            # the full table
    python benchmarks/learning.py --tasks reach-v3 --episodes 40 --variants critic  # smoke

Prints a table, writes ``benchmarks/out/learning.png`` (success vs episodes, per task and
variant) and ``learning.json``, and ends with
``success_start=<x> success_at_200=<y> hitl_episodes_ratio=<z>``: the critic variant's
success over each task's first window and last window (mean over tasks and seeds), and the
episodes the hitl variant needed to reach 90% (rolling) divided by the critic variant's (a
run that never gets there counts its full length, so the ratio is then a bound).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
TASKS = ["reach-v3", "button-press-v3", "drawer-open-v3", "push-v3"]
VARIANTS = ["critic", "sparse", "hitl", "frozen"]


class Collect:
    """Episode sink that keeps the steps in memory."""

    def __init__(self) -> None:
        self.parts = []
        self.success = False

    def add(self, steps) -> None:
        self.parts.append(steps)

    def end(self, success: bool, reason: str = "") -> None:
        self.success = success


def run_variant(args: dict) -> list[dict]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.critic.service import InProcessRewards
    from vlac.cloud.learner.algorithms import PPOConfig
    from vlac.cloud.learner.config import BCConfig, LearnerConfig, RewardsConfig
    from vlac.cloud.learner.process import Learner
    from vlac.cloud.models.encoders import ImageEncoder, TextEncoder
    from vlac.cloud.store.episodes import EpisodeStore
    from vlac.edge.agent import run_episode
    from vlac.edge.hitl.operator import ScriptedExpert, StallWatch
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
    from vlac.infra.evaluate import ActorPolicy
    from vlac.shared.episode import concat_steps

    variant, seed, tasks, work = args["variant"], args["seed"], args["tasks"], Path(args["work"])
    shutil.rmtree(work, ignore_errors=True)
    store_root = work / "store"
    store = EpisodeStore(store_root, fsync=False)
    demo_store = EpisodeStore(args["demo_store"], read_only=True)
    if variant == "hitl":  # offline demonstration replay: the stored demos of these tasks
        per_task: dict[str, int] = {}
        for e in demo_store.list_episodes():
            t = e.get("task_id")
            if e.get("source") == "demo" and t in tasks and e["outcome"]["success"] and \
                    per_task.get(t, 0) < args["demos"]:
                per_task[t] = per_task.get(t, 0) + 1
                ep = demo_store.load_episode(e["robot_id"], e["episode_id"])
                store.write_episode("demo", e["episode_id"], e["task"], ep.steps, True,
                                    source="demo", task_id=t)
    img = ImageEncoder(args["encoder"], memo=args["encoder_memo"])
    txt = TextEncoder()
    critic = SmallVLACCritic.load(args["critic"], image_encoder=img, text_encoder=txt)
    cloned = variant == "hitl" or args["success_replay"]
    cfg = LearnerConfig(
        store_root=store_root, init=Path(args["init"]), out=work / "learner",
        features=work / "features", object_store=str(work / "objects"),
        episodes_per_update=args["per_update"], seed=seed, threads=1, checkpoint_every=10_000,
        rewards=RewardsConfig(mode="critic" if variant in ("critic", "hitl") else "sparse"),
        algorithm=PPOConfig(lr=args["lr"], advantage=args["advantage"],
                            kl_ref_coef=args["kl_ref_coef"],
                            negative_scale=args["negative_scale"],
                            temperature=args["temperature"]),
        bc=BCConfig(coef=args["bc_coef"] if cloned else 0.0,
                    steps=args["bc_steps"] if cloned else 0, lr=args["bc_lr"],
                    takeover_replay=args["takeover_replay"] if variant == "hitl" else 0,
                    success_replay=args["success_replay"],
                    demo_episodes=args["demos"] * len(tasks)))
    learner = Learner(cfg, InProcessRewards(critic) if cfg.rewards.mode == "critic" else None,
                      image_encoder=img, text_encoder=txt)

    def progress(a, b) -> float:
        cam = learner.camera
        d, _ = critic.critique([a.task], a.images[cam][None], b.images[cam][None])
        return float(d[0])

    robots = {t: MetaWorldRobot(MetaWorldRobotConfig(task=t, seed=seed * 1000 + i,
                                                     max_steps=args["max_steps"]))
              for i, t in enumerate(tasks)}
    for r in robots.values():
        r.connect()
    watch = {t: StallWatch(progress, on_stall="guide",
                           guide=ScriptedExpert(t, noise=0.1, seed=seed), check_every=10,
                           patience=args["stall_patience"], min_gain=args["stall_min_gain"],
                           guide_steps=args["guide_steps"],
                           max_triggers=1)
             for t in tasks} if variant == "hitl" else {}
    retry: dict[str, object] = {}
    log, pending = [], []
    counts = dict.fromkeys(tasks, 0)
    noise = np.random.default_rng([seed, 7])  # one sampling stream across versions
    actor = learner.snapshot()
    actor.rng = noise
    t0 = time.monotonic()
    total = args["episodes"] * len(tasks)
    while min(counts.values()) < args["episodes"]:
        for t in tasks:
            if counts[t] >= args["episodes"]:
                continue
            sink = Collect()
            start = retry.pop(t, None)
            res = run_episode(robots[t], ActorPolicy(actor, args["temperature"], greedy=False),
                              lambda _, s=sink: s,
                              operator=watch.get(t), start_from=start,
                              snapshot_every=0)
            if variant == "hitl" and args["hitl_return"] and not res.success and \
                    start is None and res.snapshot is not None:
                retry[t] = res.snapshot  # return and explore from the most promising state
            steps = concat_steps(sink.parts)
            eid = f"{variant}-s{seed}-{t}-{counts[t]:04d}"
            store.write_episode("bench", eid, res.task, steps, res.success, source="policy",
                                task_id=t)
            pending.append(eid)
            log.append({"variant": variant, "seed": seed, "task": t, "episode": counts[t],
                        "success": bool(res.success), "steps": res.steps,
                        "interventions": res.interventions, "returned": start is not None,
                        "version": learner.version})
            counts[t] += 1
        if variant == "frozen":
            pending.clear()  # the control: the starting policy, never updated
        elif len(pending) >= args["per_update"]:
            infos = [e for e in store.list_episodes() if e["episode_id"] in set(pending)]
            st = learner.update(infos, learner.demo_episodes() if variant == "hitl" else None)
            pending.clear()
            actor = learner.snapshot()
            actor.rng = noise
            done = sum(counts.values())
            recent = [unassisted(r) for r in log[-4 * len(tasks):]]
            print(f"[{variant} seed {seed}] {done}/{total} episodes, v{learner.version}, "
                  f"recent success {np.mean(recent):.0%}, return {st['return_mean']:.2f}, "
                  f"kl {st['approx_kl']:.3f}, epochs {st['epochs']}, "
                  f"{time.monotonic() - t0:.0f}s",
                  flush=True)
    for r in robots.values():
        r.close()
    actor.save(work / "actor.pt")  # the final policy, for evaluations after the fact
    if args["final_eval"]:  # the final policy, greedy, on layouts no variant trained on
        from rich.console import Console

        from vlac.infra.evaluate import evaluate

        res = evaluate(lambda: ActorPolicy(actor, greedy=True), tasks, args["final_eval"],
                       max_steps=args["max_steps"], console=Console(quiet=True))
        log += [{"variant": variant, "seed": seed, "task": t, "eval": True, "layout": i,
                 "success": ok, "version": learner.version}
                for t in tasks for i, ok in enumerate(res[t]["outcomes"])]
    (work / "log.json").write_text(json.dumps(log))
    (work / "learner_log.json").write_text(json.dumps(learner.log))
    return log


def episodes_to(x: list[bool], w: int, level: float) -> int:
    from vlac.infra.train import rolling

    r = rolling(x, w)
    hit = np.nonzero((r >= level) & (np.arange(len(r)) >= w - 1))[0]
    return int(hit[0] + 1) if len(hit) else len(x)


def unassisted(r: dict) -> bool:
    """A rollout counts as a success only if the policy did it alone: an episode the expert
    took over, or one that started from a saved state (return and explore), does not."""
    return bool(r["success"]) and not r.get("interventions") and not r.get("returned")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="run seeds first-seed .. first-seed + seeds - 1")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--episodes", type=int, default=200, help="episodes per task")
    ap.add_argument("--per-update", type=int, default=8, help="episodes per PPO update")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--bc-coef", type=float, default=1.0,
                    help="weight of the BC term (hitl, or with --success-replay)")
    ap.add_argument("--advantage", default="group", choices=["group", "horizon", "gae"],
                    help="the learner's advantage estimator (vlac learner run "
                    "--algorithm.advantage)")
    ap.add_argument("--kl-ref-coef", type=float, default=0.0,
                    help="weight of the KL to the starting policy (learner "
                    "algorithm.kl_ref_coef)")
    ap.add_argument("--negative-scale", type=float, default=1.0,
                    help="factor on negative advantages (learner algorithm.negative_scale)")
    ap.add_argument("--success-replay", type=int, default=0,
                    help="successful episodes behaviour-cloned (learner bc.success_replay; "
                    "turns the BC term on in every variant)")
    ap.add_argument("--temperature", type=float, default=1.0,
                    help="sampling temperature of the rollouts (the learner scores tokens at "
                    "the same one: learner algorithm.temperature)")
    ap.add_argument("--final-eval", type=int, default=20,
                    help="after training, each variant's final policy acts greedily on this "
                    "many fixed evaluation layouts per task (the same for every variant, "
                    "none trained on); 0: skip")
    ap.add_argument("--guide-steps", type=int, default=0,
                    help="steps the expert keeps control once the critic's progress stalls "
                    "(hitl; 0: to the end of the episode, HG-DAgger style)")
    ap.add_argument("--stall-patience", type=int, default=2,
                    help="hitl: checks (every 10 steps) without a new best progress before "
                    "the expert takes over")
    ap.add_argument("--stall-min-gain", type=float, default=0.05,
                    help="hitl: progress gain per check that counts as a new best")
    ap.add_argument("--hitl-return", action="store_true",
                    help="hitl: also return and explore (a failed episode's next attempt "
                    "starts from its most promising saved state)")
    ap.add_argument("--takeover-replay", type=int, default=1000,
                    help="hitl: takeovers of the last N episodes that had one stay in the BC "
                    "pool (learner bc.takeover_replay; 0: only the current update's)")
    ap.add_argument("--bc-steps", type=int, default=100,
                    help="hitl: extra behaviour-cloning-only steps per update at --bc-lr "
                    "(learner bc.steps)")
    ap.add_argument("--bc-lr", type=float, default=3e-4)
    ap.add_argument("--demos", type=int, default=2, help="demos per task replayed (hitl)")
    ap.add_argument("--init", default=".cache/actor-bc2/actor.pt",
                    help="the ~30%% imitation policy (vlac actor pretrain --demos-per-task 2)")
    ap.add_argument("--critic", default=".cache/critic-data/critic/critic.pt")
    ap.add_argument("--demo-store", default=".cache/critic-data/store")
    ap.add_argument("--work", default=".cache/bench/learning")
    ap.add_argument("--out", default=str(OUT), help="folder of learning.json and the plot")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--encoder", default="auto", choices=["auto", "onnxruntime", "torch"],
                    help="backend of the frozen image encoder (ImageEncoder backend)")
    ap.add_argument("--encoder-memo", type=int, default=2048,
                    help="frames whose features the image encoder remembers (0: none)")
    return ap


def job(a: argparse.Namespace, variant: str, seed: int) -> dict:
    """One variant-seed job for ``run_variant`` from the parsed flags."""
    return {"variant": variant, "seed": seed, "tasks": a.tasks.split(","),
            "work": f"{a.work}/{variant}-s{seed}",
            "episodes": a.episodes, "per_update": a.per_update, "max_steps": a.max_steps,
            "lr": a.lr, "advantage": a.advantage, "bc_coef": a.bc_coef, "demos": a.demos,
            "kl_ref_coef": a.kl_ref_coef, "negative_scale": a.negative_scale,
            "success_replay": a.success_replay, "temperature": a.temperature,
            "final_eval": a.final_eval, "guide_steps": a.guide_steps,
            "takeover_replay": a.takeover_replay, "stall_patience": a.stall_patience,
            "stall_min_gain": a.stall_min_gain, "hitl_return": a.hitl_return,
            "bc_steps": a.bc_steps, "bc_lr": a.bc_lr, "encoder": a.encoder,
            "encoder_memo": a.encoder_memo,
            "init": a.init, "critic": a.critic, "demo_store": a.demo_store}


def main() -> None:
    a = parser().parse_args()
    tasks = a.tasks.split(",")
    for p in (a.init, a.critic):
        if not Path(p).exists():
            sys.exit(f"{p} does not exist: run `vlac train --quick` (or `vlac critic train` / "
                     "`vlac actor pretrain --demos-per-task 2`) first")
    jobs = [job(a, v, s) for s in range(a.first_seed, a.first_seed + a.seeds)
            for v in a.variants.split(",")]
    t0 = time.monotonic()
    with mp.get_context("spawn").Pool(min(a.processes, len(jobs))) as pool:
        logs = pool.map(run_variant, jobs, chunksize=1)
    wall = time.monotonic() - t0
    rows = [r for log in logs for r in log]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learning.json").write_text(json.dumps(rows))
    report(rows, tasks, a, wall)


def report(rows: list[dict], tasks: list[str], a, wall: float) -> None:
    import matplotlib
    from rich.console import Console
    from rich.table import Table
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vlac.infra.train import rolling

    w = a.window
    variants = sorted({r["variant"] for r in rows}, key=VARIANTS.index)
    seeds = sorted({r["seed"] for r in rows})
    evals = [r for r in rows if r.get("eval")]
    rows = [r for r in rows if not r.get("eval")]
    series = {(v, s, t): [unassisted(r) for r in rows if (r["variant"], r["seed"], r["task"])
                          == (v, s, t)] for v in variants for s in seeds for t in tasks}
    table = Table(title=f"learning: success of rollouts (window {w}), {len(seeds)} seed(s), "
                  f"{a.episodes} episodes per task, wall {wall / 60:.0f} min")
    for col in ("variant", "task", "first window", "last window", "episodes to 90%",
                "interventions"):
        table.add_column(col)
    summary = {}
    for v in variants:
        firsts, lasts, to90 = [], [], []
        for t in tasks:
            xs = [series[(v, s, t)] for s in seeds]
            first = np.mean([np.mean(x[:w]) for x in xs])
            last = np.mean([np.mean(x[-w:]) for x in xs])
            n90 = np.mean([episodes_to(x, w, 0.9) for x in xs])
            inter = sum(r["interventions"] for r in rows if r["variant"] == v and
                        r["task"] == t)
            firsts.append(first)
            lasts.append(last)
            to90.append(n90)
            table.add_row(v, t, f"{first:.0%}", f"{last:.0%}", f"{n90:.0f}", str(inter))
        summary[v] = {"first": float(np.mean(firsts)), "last": float(np.mean(lasts)),
                      "to90": float(np.mean(to90))}
        table.add_row(v, "mean", f"{summary[v]['first']:.0%}", f"{summary[v]['last']:.0%}",
                      f"{summary[v]['to90']:.0f}", "", end_section=True)
    Console(width=120).print(table)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        for v in variants:
            curves = [rolling(series[(v, s, t)], w) for s in seeds]
            n = min(len(c) for c in curves)
            ax.plot(np.arange(1, n + 1), np.mean([c[:n] for c in curves], 0), label=v)
        ax.axhline(0.9, color="grey", ls=":", lw=1)
        ax.set_title(t)
        ax.set_xlabel("episode")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(f"success (rolling {w})")
    axes[0][-1].legend()
    fig.tight_layout()
    out = Path(a.out)
    fig.savefig(out / "learning.png", dpi=110)
    print(f"plot: {out / 'learning.png'}")
    if "frozen" in summary:  # every variant meets the same layouts in the same order
        print("last window against the frozen starting policy on the same layouts: " +
              ", ".join(f"{v} {summary[v]['last'] - summary['frozen']['last']:+.0%}"
                        for v in variants if v != "frozen"))
    if evals:
        final_eval_table(evals, variants, tasks)
    base = summary.get("critic", next(iter(summary.values())))
    ratio = summary["hitl"]["to90"] / base["to90"] if "hitl" in summary and base["to90"] \
        else float("nan")
    print(f"success_start={base['first']:.3f} success_at_200={base['last']:.3f} "
          f"hitl_episodes_ratio={ratio:.3f}")


def final_eval_table(evals: list[dict], variants: list[str], tasks: list[str]) -> None:
    """Greedy success of each variant's final policy on the shared evaluation layouts, and
    the paired difference (layout by layout, seed by seed) against the frozen control."""
    from rich.console import Console
    from rich.table import Table

    won = {(r["variant"], r["seed"], r["task"], r["layout"]): r["success"] for r in evals}
    table = Table(title="final policies, greedy, on the same fixed evaluation layouts")
    for col in ("variant", *tasks, "mean", "vs frozen (paired)"):
        table.add_column(col)
    for v in variants:
        keys = [k for k in won if k[0] == v]
        cells = [f"{np.mean([won[k] for k in keys if k[2] == t]):.0%}" for t in tasks]
        diff = ""
        if v != "frozen" and any(k[0] == "frozen" for k in won):
            d = [won[k] - won[("frozen", *k[1:])] for k in keys if ("frozen", *k[1:]) in won]
            diff = f"{np.mean(d):+.0%} ± {np.std(d) / np.sqrt(len(d)):.0%} (n={len(d)})"
        table.add_row(v, *cells, f"{np.mean([won[k] for k in keys]):.0%}", diff)
    Console(width=120).print(table)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

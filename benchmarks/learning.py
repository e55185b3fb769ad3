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
  for the person and keeps control to the end of the episode (``--operator.guide-steps``:
  fewer); its steps are marked interventions and only ever used for behaviour cloning,
  aggregated over the last ``--bc.takeover-replay`` such episodes and trained with
  ``--bc.steps`` extra BC steps per update at ``--bc.lr``: HG-DAgger's protocol); with
  ``--hitl-return`` also return-and-explore: a failed episode's next attempt starts from its
  most promising saved state (the critic's best progress) once per failure (off by default:
  the restarted attempt inherits what is left of the simulator's step budget; see
  docs/training.md);
- ``frozen``: the starting policy, never updated: the control. Every variant meets the same
  layouts in the same order (the robots' seeds), and the layouts differ in difficulty, so a
  variant's change from first to last window means something only against this one's.

Each variant runs in its own process (one torch thread): episodes are rolled out in
Meta-World with the learner's current weights (sampling at ``--temperature``, 1 by default),
stored in an episode store, and handed to ``vlac.cloud.learner.process.Learner.update`` every
``--per-update`` episodes (round-robin over tasks). The ``--operator.*`` and ``--bc.*`` flags
are the sections of ``vlac.shared.hitl`` with their defaults, the ones `vlac train` runs with
(``vlac train --hitl.operator.*`` / ``--hitl.bc.*``); every variant gets the same sections and
differs only in what feeds them. The success rate is that of the rollouts themselves (a
rolling window of ``--window`` episodes per task), counting only what the policy did alone
(``vlac.shared.hitl.unassisted``): an episode the expert took over, or one restarted from a
saved state, counts as a failure. After training, each variant's final policy also acts
greedily on ``--final-eval`` fixed evaluation layouts per task, the same for every variant
and never trained on; the second table gives those rates and each variant's paired
difference from the frozen control, which removes both the layout drift and the sampling
noise of the rollout windows.

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
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import typing
import warnings
from pathlib import Path

import numpy as np

from vlac.shared.config import ConfigError
from vlac.shared.hitl import BCConfig, HitlConfig, OperatorConfig, unassisted
from vlac.shared.tasks import HEADLINE_TASKS

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
TASKS = list(HEADLINE_TASKS)
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
    """One variant and seed: roll out, learn, and evaluate the final policy. Returns its log
    rows (one per rollout, then one per evaluation layout)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from vlac.cloud.store.episodes import EpisodeStore

    work, hitl = Path(args["work"]), args["hitl"]
    shutil.rmtree(work, ignore_errors=True)
    store = EpisodeStore(work / "store", fsync=False)
    if hitl.demo_replay:  # offline demonstration replay: the stored demos of these tasks
        copy_demos(EpisodeStore(args["demo_store"], read_only=True), store, args["tasks"],
                   args["demos"])
    learner, critic = make_learner(args, work, store.root)
    log, actor = roll_out_and_learn(args, learner, critic, store)
    actor.save(work / "actor.pt")  # the final policy, for evaluations after the fact
    if args["final_eval"]:  # the final policy, greedy, on layouts no variant trained on
        log += final_evaluation(args, actor, learner.version)
    (work / "log.json").write_text(json.dumps(log))
    (work / "learner_log.json").write_text(json.dumps(learner.log))
    return log


def copy_demos(demo_store, store, tasks: list[str], per_task: int) -> None:
    """Up to ``per_task`` successful demonstrations of each task into ``store``."""
    have: dict[str, int] = {}
    for e in demo_store.list_episodes():
        t = e.get("task_id")
        if e.get("source") == "demo" and t in tasks and e["outcome"]["success"] and \
                have.get(t, 0) < per_task:
            have[t] = have.get(t, 0) + 1
            ep = demo_store.load_episode(e["robot_id"], e["episode_id"])
            store.write_episode("demo", e["episode_id"], e["task"], ep.steps, True,
                                source="demo", task_id=t)


def make_learner(args: dict, work: Path, store_root: Path):
    """The learner (its ``bc`` section is the variant's, as it is) and the critic."""
    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.critic.service import InProcessRewards
    from vlac.cloud.learner.algorithms import PPOConfig
    from vlac.cloud.learner.config import LearnerConfig, RewardsConfig
    from vlac.cloud.learner.process import Learner
    from vlac.cloud.models.encoders import ImageEncoder, TextEncoder

    img = ImageEncoder(args["encoder"], memo=args["encoder_memo"])
    txt = TextEncoder()
    critic = SmallVLACCritic.load(args["critic"], image_encoder=img, text_encoder=txt)
    cfg = LearnerConfig(
        store_root=store_root, init=Path(args["init"]), out=work / "learner",
        features=work / "features", object_store=str(work / "objects"),
        episodes_per_update=args["per_update"], seed=args["seed"], threads=1,
        checkpoint_every=10_000,
        rewards=RewardsConfig(mode="critic" if args["variant"] in ("critic", "hitl")
                              else "sparse"),
        algorithm=PPOConfig(lr=args["lr"], advantage=args["advantage"],
                            kl_ref_coef=args["kl_ref_coef"],
                            negative_scale=args["negative_scale"],
                            temperature=args["temperature"]),
        bc=args["hitl"].bc)
    rewards = InProcessRewards(critic) if cfg.rewards.mode == "critic" else None
    return Learner(cfg, rewards, image_encoder=img, text_encoder=txt), critic


def stall_watches(args: dict, learner, critic) -> dict:
    """Per task, the stall trigger of the variant's operator section (guided exploration:
    the scripted expert, with action noise 0.1, stands in for the person); {} without."""
    from vlac.edge.hitl.operator import ScriptedExpert
    from vlac.edge.process import stall_watch

    operator = args["hitl"].operator
    if operator.on_stall != "guide":
        return {}

    def progress(a, b) -> float:
        cam = learner.camera
        d, _ = critic.critique([a.task], a.images[cam][None], b.images[cam][None])
        return float(d[0])

    return {t: stall_watch(operator, progress, ScriptedExpert(t, noise=0.1, seed=args["seed"]))
            for t in args["tasks"]}


def roll_out_and_learn(args: dict, learner, critic, store) -> tuple[list[dict], object]:
    """Rounds of one episode per task with the learner's current weights, an update every
    ``per_update`` episodes (none for the frozen control). Returns the log rows and the
    final policy."""
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig

    variant, seed, tasks = args["variant"], args["seed"], args["tasks"]
    robots = {t: MetaWorldRobot(MetaWorldRobotConfig(task=t, seed=seed * 1000 + i,
                                                     max_steps=args["max_steps"]))
              for i, t in enumerate(tasks)}
    for r in robots.values():
        r.connect()
    watch = stall_watches(args, learner, critic)
    retry: dict[str, object] = {}
    log, pending = [], []
    counts = dict.fromkeys(tasks, 0)
    noise = np.random.default_rng([seed, 7])  # one sampling stream across versions
    actor = learner.snapshot()
    actor.rng = noise
    t0 = time.monotonic()
    while min(counts.values()) < args["episodes"]:
        for t in tasks:
            if counts[t] < args["episodes"]:
                row = episode(args, t, robots[t], actor, watch.get(t), retry, store,
                              counts[t], learner.version)
                pending.append(row.pop("episode_id"))
                log.append(row)
                counts[t] += 1
        if variant == "frozen":
            pending.clear()  # the control: the starting policy, never updated
        elif len(pending) >= args["per_update"]:
            infos = [e for e in store.list_episodes() if e["episode_id"] in set(pending)]
            st = learner.update(infos, learner.demo_episodes())
            pending.clear()
            actor = learner.snapshot()
            actor.rng = noise
            recent = [success_alone(r) for r in log[-4 * len(tasks):]]
            print(f"[{variant} seed {seed}] {sum(counts.values())}/"
                  f"{args['episodes'] * len(tasks)} episodes, v{learner.version}, "
                  f"recent success {np.mean(recent):.0%}, return {st['return_mean']:.2f}, "
                  f"kl {st['approx_kl']:.3f}, epochs {st['epochs']}, "
                  f"{time.monotonic() - t0:.0f}s", flush=True)
    for r in robots.values():
        r.close()
    return log, actor


def episode(args: dict, t: str, robot, actor, operator, retry: dict, store, k: int,
            version: int) -> dict:
    """Rollout ``k`` of task ``t`` into ``store``; returns its log row (and its
    ``episode_id``). With ``--hitl-return`` a failed attempt's next one starts from its most
    promising saved state."""
    from vlac.edge.agent import run_episode
    from vlac.infra.evaluate import ActorPolicy
    from vlac.shared.episode import concat_steps

    variant, seed = args["variant"], args["seed"]
    sink = Collect()
    start = retry.pop(t, None)
    res = run_episode(robot, ActorPolicy(actor, args["temperature"], greedy=False),
                      lambda _, s=sink: s, operator=operator, start_from=start,
                      snapshot_every=0)
    if variant == "hitl" and args["hitl_return"] and not res.success and \
            start is None and res.snapshot is not None:
        retry[t] = res.snapshot  # return and explore from the most promising state
    eid = f"{variant}-s{seed}-{t}-{k:04d}"
    store.write_episode("bench", eid, res.task, concat_steps(sink.parts), res.success,
                        source="policy", task_id=t)
    return {"variant": variant, "seed": seed, "task": t, "episode": k,
            "success": bool(res.success), "steps": res.steps,
            "interventions": res.interventions, "returned": start is not None,
            "version": version, "episode_id": eid}


def final_evaluation(args: dict, actor, version: int) -> list[dict]:
    from rich.console import Console

    from vlac.infra.evaluate import ActorPolicy, evaluate

    res = evaluate(lambda: ActorPolicy(actor, greedy=True), args["tasks"], args["final_eval"],
                   max_steps=args["max_steps"], console=Console(quiet=True))
    return [{"variant": args["variant"], "seed": args["seed"], "task": t, "eval": True,
             "layout": i, "success": ok, "version": version}
            for t in args["tasks"] for i, ok in enumerate(res[t]["outcomes"])]


def episodes_to(x: list[bool], w: int, level: float) -> int:
    from vlac.infra.train import rolling

    r = rolling(x, w)
    hit = np.nonzero((r >= level) & (np.arange(len(r)) >= w - 1))[0]
    return int(hit[0] + 1) if len(hit) else len(x)


def success_alone(r: dict) -> bool:
    """A rollout's success by the one rule (``vlac.shared.hitl.unassisted``): an episode the
    expert took over, or one that started from a saved state, does not count."""
    return unassisted(r["success"], r.get("interventions", 0), r.get("returned", False))


def add_section(ap: argparse.ArgumentParser, name: str, cls: type, skip: tuple = ()) -> None:
    """``--NAME.FIELD`` flags for a config section, with its help texts; a flag left out
    keeps the section's own default."""
    hints, defaults = typing.get_type_hints(cls), cls()
    group = ap.add_argument_group(f"--{name}.*: {cls.__module__}.{cls.__name__}")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        group.add_argument(f"--{name}.{f.name.replace('_', '-')}", dest=f"{name}.{f.name}",
                           type=args[0] if args else tp, default=argparse.SUPPRESS,
                           help=f"{f.metadata['help']} (default: "
                           f"{getattr(defaults, f.name)})".replace("%", "%%"))


def section(a: argparse.Namespace, name: str, cls: type):
    return cls(**{k.split(".", 1)[1]: v for k, v in vars(a).items()
                  if k.startswith(name + ".")})


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
    ap.add_argument("--advantage", default="group", choices=["group", "horizon", "gae"],
                    help="the learner's advantage estimator (vlac learner run "
                    "--algorithm.advantage)")
    ap.add_argument("--kl-ref-coef", type=float, default=0.0,
                    help="weight of the KL to the starting policy (learner "
                    "algorithm.kl_ref_coef)")
    ap.add_argument("--negative-scale", type=float, default=1.0,
                    help="factor on negative advantages (learner algorithm.negative_scale)")
    ap.add_argument("--temperature", type=float, default=1.0,
                    help="sampling temperature of the rollouts (the learner scores tokens at "
                    "the same one: learner algorithm.temperature)")
    ap.add_argument("--final-eval", type=int, default=20,
                    help="after training, each variant's final policy acts greedily on this "
                    "many fixed evaluation layouts per task (the same for every variant, "
                    "none trained on); 0: skip")
    ap.add_argument("--hitl-return", action="store_true",
                    help="hitl: also return and explore (a failed episode's next attempt "
                    "starts from its most promising saved state)")
    ap.add_argument("--demos", type=int, default=2,
                    help="hitl: demos per task copied into the variant's store (the learner "
                    "replays up to --bc.demo-episodes of them)")
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
    # the hitl variant's operator (it guides when the critic's progress stalls) and every
    # variant's behaviour cloning (fed only where there is something to clone)
    add_section(ap, "operator", OperatorConfig, skip=("takeover_prob", "takeover_steps",
                                                      "on_stall"))
    add_section(ap, "bc", BCConfig)
    return ap


def job(a: argparse.Namespace, variant: str, seed: int, operator: OperatorConfig,
        bc: BCConfig) -> dict:
    """One variant-seed job for ``run_variant`` from the parsed flags. The variants differ in
    their human-in-the-loop switches: only hitl replays demonstrations and guides."""
    helped = variant == "hitl"
    return {"variant": variant, "seed": seed, "tasks": a.tasks.split(","),
            "work": f"{a.work}/{variant}-s{seed}",
            "hitl": HitlConfig(demo_replay=helped, guide_on_stall=helped, operator=operator,
                               bc=bc),
            "episodes": a.episodes, "per_update": a.per_update, "max_steps": a.max_steps,
            "lr": a.lr, "advantage": a.advantage, "demos": a.demos,
            "kl_ref_coef": a.kl_ref_coef, "negative_scale": a.negative_scale,
            "temperature": a.temperature, "final_eval": a.final_eval,
            "hitl_return": a.hitl_return, "encoder": a.encoder, "encoder_memo": a.encoder_memo,
            "init": a.init, "critic": a.critic, "demo_store": a.demo_store}


def main() -> None:
    a = parser().parse_args()
    tasks = a.tasks.split(",")
    for p in (a.init, a.critic):
        if not Path(p).exists():
            sys.exit(f"{p} does not exist: run `vlac train --quick` (or `vlac critic train` / "
                     "`vlac actor pretrain --demos-per-task 2`) first")
    try:
        operator, bc = section(a, "operator", OperatorConfig), section(a, "bc", BCConfig)
        jobs = [job(a, v, s, operator, bc) for s in range(a.first_seed, a.first_seed + a.seeds)
                for v in a.variants.split(",")]
    except ConfigError as e:
        sys.exit(f"bad flag: {e}")
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
    series = {(v, s, t): [success_alone(r) for r in rows if (r["variant"], r["seed"], r["task"])
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

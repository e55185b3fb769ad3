"""Learning benchmark: RL algorithms x rewards x human help, from the ~30% imitation policy.

Variants, measured from the same starting weights on the same layouts:

- ``ALGO-REWARD``: algorithm ALGO (``--algorithms``: names of
  ``vlac.cloud.learner.algorithms``) learning from REWARD (``--rewards``), with no human
  help (no demonstration replay, no takeovers). ``critic``: the critic's dense progress
  since the first frame plus 1 where the robot reports success (the learner's defaults);
  ``sparse``: the success reward alone (1 at the end of a successful episode); ``oracle``:
  Meta-World's own shaped reward in place of the critic's progress, shaped the same way (a
  reference for diagnosis, never a product default; ``learning_oracle``);
- ``ALGO-REWARD-hitl`` for each pair of ``--hitl``: the same plus the human-in-the-loop
  protocols: offline demonstration replay (behaviour cloning on stored demos), and
  human-guided exploration when the critic's progress stalls
  (``vlac.edge.hitl.operator.StallWatch``; the scripted expert stands in for the person and
  keeps control to the end of the episode (``--operator.guide-steps``: fewer); its steps are
  marked interventions and only ever used for behaviour cloning, aggregated over the last
  ``--bc.takeover-replay`` such episodes and trained with ``--bc.steps`` extra BC steps per
  update at ``--bc.lr``: HG-DAgger's protocol); with ``--hitl-return`` also return and
  explore (a failed episode's next attempt starts from its most promising saved state, once
  per failure);
- ``frozen``: the starting policy, never updated: the control (``--no-frozen``: skip it).
  Every variant meets the same layouts in the same order (the robots' seeds), and layouts
  differ in difficulty, so a variant's numbers mean something only against this one's.

The default run is ppo-critic, ppo-sparse, ppo-critic-hitl and frozen on the four headline
tasks, 200 episodes per task, seed 0 (``BEST_ALGORITHM``: the product's default algorithm).
Each variant and seed runs in its own process (one torch thread): episodes are rolled out in
Meta-World with the learner's current weights (sampling at ``--temperature``), stored in an
episode store and handed to ``vlac.cloud.learner.process.Learner.update`` every ``--per-
update`` episodes (round-robin over tasks). ``--lr``, ``--temperature``, ``--advantage``,
``--kl-ref-coef`` and ``--negative-scale`` (also spelt ``--algorithm.*``) go to every
algorithm whose config has that field. The ``--operator.*`` and ``--bc.*`` flags are the
sections of ``vlac.shared.hitl`` with the defaults `vlac train` runs with; every variant
gets the same sections and differs only in what feeds them. Rollout success counts only what
the policy did alone (``vlac.shared.hitl.unassisted``), over a rolling window of
``--window`` episodes per task. After training, each final policy acts on ``--final-eval``
fixed evaluation layouts per task (the same for every variant, never trained on), greedily
and sampling at the rollout temperature with the same noise for every variant; paired
differences on them remove the layout drift and the rollout windows' sampling noise.

    python benchmarks/learning.py                       # the default run
    python benchmarks/learning.py --first-seed 1 --out benchmarks/out/learning-s1
    python benchmarks/learning.py --combine benchmarks/out/learning benchmarks/out/learning-s1
    python benchmarks/learning.py --algorithms ppo,parl --rewards critic,sparse,oracle \\
        --hitl none --tasks reach-v3 --episodes 40      # a comparison without help

Each job writes its rows to ``OUT/<variant>-s<seed>.json`` (``--out``, default
``benchmarks/out/learning/``) beside ``run.json`` (the command line, flags and wall time);
``--combine DIR [DIR ...]`` reads the results of several runs (e.g. one per seed) and
reports them together without running anything. The report: the rollout table, the final
evaluations (greedy and sampled) with each variant's paired difference from the control,
``OUT/learning.png`` (rolling unassisted success per task and variant, mean over seeds), and
the last line

    critic_vs_frozen=<points> critic_vs_sparse=<points> oracle_vs_frozen=<points>
    hitl_episodes_ratio=<x> success_at_200=<y>

(one line) for the best algorithm B (the first of ``--algorithms`` with a B-critic variant,
else the first of them): paired mean differences in percentage points on the greedy final
evaluation over all tasks, layouts and seeds (B-critic minus frozen, B-critic minus
B-sparse, B-oracle minus frozen; nan where a variant is missing); the episodes per task
B-critic-hitl needs until its rolling unassisted success reaches B-critic's final rolling
rate (its full length if never), over B-critic's episodes per task; and B-critic's greedy
final-evaluation success. With ``--combine`` the plot goes to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import sys
import time
import typing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the learning_* modules beside it

from learning_report import load_results, report, result_name, success_alone
from learning_run import algorithm_config, run_job, run_variant
from learning_variants import (
    BEST_ALGORITHM,
    REWARDS,
    parse_variant,
    variant_names,
)

from vlac.shared.config import ConfigError
from vlac.shared.hitl import BCConfig, HitlConfig, OperatorConfig
from vlac.shared.tasks import HEADLINE_TASKS

__all__ = ["BEST_ALGORITHM", "job", "main", "parser", "run_variant", "success_alone"]

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out" / "learning"
TASKS = list(HEADLINE_TASKS)
# the algorithm settings the benchmark passes on (the flags' dests are the config fields), each to
# the algorithms whose config has the field
OVERRIDES = ("lr", "advantage", "kl_ref_coef", "negative_scale", "temperature")


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


def add_variant_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("variants")
    g.add_argument("--algorithms", default=BEST_ALGORITHM,
                   help="comma list of learner algorithms (vlac.cloud.learner.algorithms)")
    g.add_argument("--rewards", default="critic,sparse",
                   help=f"comma list of rewards, each of {', '.join(REWARDS)}")
    g.add_argument("--hitl", default="BEST-critic",
                   help="comma list of ALGO-REWARD pairs that also run with human help "
                   "(BEST: the first of --algorithms); none: no help variants")
    g.add_argument("--no-frozen", action="store_true", help="skip the frozen control")
    g.add_argument("--combine", nargs="+", metavar="DIR",
                   help="report the results in these folders together, run nothing")


def add_algorithm_flags(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("algorithm settings (each goes to every algorithm whose config "
                              "has the field; left out: the algorithm's own default)")
    g.add_argument("--algorithm.lr", "--lr", dest="lr", type=float, help="learning rate")
    g.add_argument("--algorithm.advantage", "--advantage", dest="advantage",
                   help="advantage estimator (ppo: group, horizon or gae)")
    g.add_argument("--algorithm.kl-ref-coef", "--kl-ref-coef", dest="kl_ref_coef",
                   type=float, help="weight of the KL to the starting policy")
    g.add_argument("--algorithm.negative-scale", "--negative-scale", dest="negative_scale",
                   type=float, help="factor on negative advantages")
    g.add_argument("--algorithm.temperature", "--temperature", dest="temperature", type=float,
                   default=1.0, help="sampling temperature of the rollouts and of the sampled "
                   "final evaluation (the algorithm scores tokens at the same one)")
    g.add_argument("--algorithm.set", dest="settings", action="append", default=[],
                   metavar="FIELD=VALUE", help="any other field of an algorithm's config "
                   "section (vlac learner run --algorithm.name NAME -h lists them), e.g. "
                   "critic_steps=100; repeatable")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="run seeds first-seed .. first-seed + seeds - 1")
    add_variant_flags(ap)
    ap.add_argument("--episodes", type=int, default=200, help="episodes per task")
    ap.add_argument("--per-update", type=int, default=8, help="episodes per learner update")
    ap.add_argument("--window", type=int, default=20, help="episodes of the rolling success")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--action-repeat", type=int, default=1,
                    help="simulator steps each action is held for (the robots' "
                         "--robot.action-repeat): k times fewer decisions per episode; "
                         "--max-steps still counts simulator steps")
    ap.add_argument("--layout-repeats", type=int, default=1,
                    help="rollouts per drawn layout (the robots' --robot.layout-repeats): "
                    "groups from the same start, for --algorithm.set group_by=start")
    add_algorithm_flags(ap)
    ap.add_argument("--final-eval", type=int, default=20,
                    help="after training, each final policy acts on this many fixed "
                    "evaluation layouts per task, greedily and sampled (the same for every "
                    "variant, none trained on); 0: skip")
    ap.add_argument("--hitl-return", action="store_true",
                    help="help variants: also return and explore (a failed episode's next "
                    "attempt starts from its most promising saved state)")
    ap.add_argument("--demos", type=int, default=2,
                    help="help variants: demos per task copied into the variant's store (the "
                    "learner replays up to --bc.demo-episodes of them)")
    ap.add_argument("--init", default=".cache/actor-bc2/actor.pt",
                    help="the ~30%% imitation policy (vlac actor pretrain --demos-per-task 2)")
    ap.add_argument("--critic", default=".cache/critic-data/critic/critic.pt")
    ap.add_argument("--demo-store", default=".cache/critic-data/store")
    ap.add_argument("--work", default=".cache/bench/learning")
    ap.add_argument("--out", default=str(OUT),
                    help="folder of the results (<variant>-s<seed>.json, run.json) and plot")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--encoder", default="auto", choices=["auto", "onnxruntime", "torch"],
                    help="backend of the frozen image encoder (ImageEncoder backend)")
    ap.add_argument("--encoder-memo", type=int, default=2048,
                    help="frames whose features the image encoder remembers (0: none)")
    # the help variants' operator (it guides when the critic's progress stalls) and every
    # variant's behaviour cloning (fed only where there is something to clone)
    add_section(ap, "operator", OperatorConfig, skip=("takeover_prob", "takeover_steps",
                                                      "on_stall"))
    add_section(ap, "bc", BCConfig)
    return ap


def overrides(a: argparse.Namespace) -> dict:
    """The algorithm settings given (temperature always: the robots sample at it)."""
    out = {k: getattr(a, k) for k in OVERRIDES if getattr(a, k, None) is not None}
    for item in getattr(a, "settings", []):
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--algorithm.set {item!r}: give FIELD=VALUE")
        out[key.replace("-", "_")] = literal(value)
    return out


def literal(text: str):
    """'100' -> 100, '3e-4' -> 0.0003, 'rank' -> 'rank'."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def job(a: argparse.Namespace, variant: str, seed: int, operator: OperatorConfig | None = None,
        bc: BCConfig | None = None) -> dict:
    """One variant-seed job for ``learning_run.run_variant`` from the parsed flags. The
    variants differ in algorithm, rewards and their human-in-the-loop switches: only the
    help variants replay demonstrations and guide."""
    helped = parse_variant(variant).helped
    operator = operator or section(a, "operator", OperatorConfig)
    bc = bc or section(a, "bc", BCConfig)
    return {"variant": variant, "seed": seed, "tasks": a.tasks.split(","),
            "work": f"{a.work}/{variant}-s{seed}",
            "hitl": HitlConfig(demo_replay=helped, guide_on_stall=helped, operator=operator,
                               bc=bc),
            "episodes": a.episodes, "per_update": a.per_update, "max_steps": a.max_steps,
            "layout_repeats": a.layout_repeats, "action_repeat": a.action_repeat,
            "overrides": overrides(a),
            "temperature": a.temperature, "demos": a.demos,
            "final_eval": a.final_eval, "hitl_return": a.hitl_return, "encoder": a.encoder,
            "encoder_memo": a.encoder_memo, "init": a.init, "critic": a.critic,
            "demo_store": a.demo_store}


def variants_of(a: argparse.Namespace) -> list[str]:
    """The run's variant names from --algorithms, --rewards, --hitl and --no-frozen."""
    algorithms, rewards = a.algorithms.split(","), a.rewards.split(",")
    bad = [r for r in rewards if r not in REWARDS]
    if bad:
        raise ValueError(f"--rewards {','.join(bad)}: use {', '.join(REWARDS)}")
    hitl = [] if a.hitl == "none" else a.hitl.split(",")
    return variant_names(algorithms, rewards, hitl, frozen=not a.no_frozen)


def check_algorithms(variants: list[str], given: dict) -> None:
    """Every variant's algorithm builds its config; a note for each setting that applies to
    none of them."""
    used: set[str] = set()
    for v in map(parse_variant, variants):
        cfg = algorithm_config(v.algorithm, given)
        if not v.frozen:  # the control's learner never updates
            used |= {f.name for f in dataclasses.fields(cfg)} & set(given)
    for k in sorted(set(given) - used - {"temperature"}):
        print(f"note: --algorithm.{k.replace('_', '-')} is a setting of none of the run's "
              "algorithms", flush=True)


def prerequisites(a: argparse.Namespace, variants: list[str]) -> None:
    kinds = [parse_variant(v) for v in variants]
    need = [a.init]
    need += [a.critic] if any(v.reward == "critic" or v.helped for v in kinds) else []
    need += [a.demo_store] if any(v.helped for v in kinds) else []
    store, tasks = a.demo_store, a.tasks
    make = {a.demo_store: f"vlac demos collect --tasks {tasks} --episodes 12 --store-root {store}",
            a.init: f"vlac actor pretrain --store-root {store} --demos-per-task 2 --out "
                    f"{Path(a.init).parent}",
            a.critic: f"vlac critic train --store-root {store} --out {Path(a.critic).parent}"}
    missing = [p for p in need if not Path(p).exists()]
    if missing:
        steps = [make[store]] if not Path(store).exists() else []
        steps += [make[p] for p in missing if p != store]
        sys.exit(f"{', '.join(missing)} missing: make {'it' if len(missing) == 1 else 'them'} "
                 "with\n  " + "\n  ".join(steps))


def combine(a: argparse.Namespace) -> None:
    try:
        rows, algorithms = load_results([Path(d) for d in a.combine])
    except ValueError as e:
        sys.exit(str(e))
    report(rows, Path(a.out), a.window, f", combined from {len(a.combine)} folder(s)",
           algorithms)


def write_run(out: Path, a: argparse.Namespace, variants: list[str], seeds: list[int],
              wall: float | None) -> None:
    (out / "run.json").write_text(json.dumps({
        "argv": sys.argv, "wall_s": wall, "algorithms": a.algorithms.split(","),
        "variants": variants, "seeds": seeds, "flags": vars(a)}, indent=1))


def main() -> None:
    a = parser().parse_args()
    if a.combine:
        return combine(a)
    try:
        variants = variants_of(a)
        seeds = list(range(a.first_seed, a.first_seed + a.seeds))
        operator, bc = section(a, "operator", OperatorConfig), section(a, "bc", BCConfig)
        jobs = [job(a, v, s, operator, bc) for s in seeds for v in variants]
        check_algorithms(variants, overrides(a))
    except (ConfigError, ValueError) as e:
        sys.exit(f"bad flag: {e}")
    prerequisites(a, variants)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_run(out, a, variants, seeds, None)
    print(f"variants: {', '.join(variants)}; seeds {seeds}; results in {out}", flush=True)
    t0, rows = time.monotonic(), []
    with mp.get_context("spawn").Pool(min(a.processes, len(jobs))) as pool:
        for variant, seed, log in pool.imap_unordered(run_job, jobs, chunksize=1):
            (out / result_name(variant, seed)).write_text(json.dumps(log))
            rows += log
        pool.close()
        pool.join()
    wall = time.monotonic() - t0
    write_run(out, a, variants, seeds, wall)
    report(rows, out, a.window, f", wall {wall / 60:.0f} min", a.algorithms.split(","))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

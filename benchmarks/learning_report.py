"""The learning benchmark's report: tables, the plot, the key line, and ``--combine``.

Rows are the jobs' log rows: one per rollout (``variant``, ``seed``, ``task``, ``episode``,
``success``, ``interventions``, ``returned``, ...) and one per final-evaluation layout
(``eval`` True, ``mode`` greedy, sampled or mean, ``layout``, ``success``). The numbers of the key
line are pure functions of them (``paired_points``, ``episodes_to_reach``, ``key_line``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from learning_variants import FROZEN, HELP, best_algorithm, variant_order

from vlac.shared.hitl import unassisted

MODES = ("greedy", "sampled", "mean")
"""How a final policy decodes its tokens in the evaluation: the argmax, a sample at the rollout
temperature, or the mean bin (``TorchActor.mean_tokens``). The key line reads greedy."""
HOW = {"greedy": "greedy", "sampled": "sampled at the rollout temperature",
       "mean": "the mean bin of each dimension"}
RESULTS_GLOB = "*-s*.json"  # OUT_RUN/<variant>-s<seed>.json


# ---------------------------------------------------------------------- numbers
def success_alone(r: dict) -> bool:
    """A rollout's success by the one rule (``vlac.shared.hitl.unassisted``): an episode the
    expert took over, or one that started from a saved state, does not count."""
    return unassisted(r["success"], r.get("interventions", 0), r.get("returned", False))


def rolling(x: list[bool], w: int) -> np.ndarray:
    """The success rate over the last ``w`` episodes (fewer at the start)."""
    x_ = np.asarray(x, float)
    return np.array([x_[max(0, i - w + 1):i + 1].mean() for i in range(len(x_))])


def episodes_to_reach(x: list[bool], w: int, level: float) -> int:
    """Episodes until the rolling rate over a full window of ``w`` first reaches ``level``
    (1-based: the episode that completes it); ``len(x)`` when it never does."""
    r = rolling(x, w)
    hit = np.nonzero((r >= level - 1e-9) & (np.arange(len(r)) >= w - 1))[0]
    return int(hit[0] + 1) if len(hit) else len(x)


def series(rows: list[dict], variant: str, seed: int, task: str) -> list[bool]:
    """A variant's unassisted rollout outcomes on one task and seed, in episode order."""
    mine = [r for r in rows if not r.get("eval") and
            (r["variant"], r["seed"], r["task"]) == (variant, seed, task)]
    return [success_alone(r) for r in sorted(mine, key=lambda r: r["episode"])]


def eval_outcomes(rows: list[dict], variant: str, mode: str = "greedy") -> dict[tuple, bool]:
    """A variant's final-evaluation outcomes by (seed, task, layout)."""
    return {(r["seed"], r["task"], r["layout"]): bool(r["success"]) for r in rows
            if r.get("eval") and r["variant"] == variant and r.get("mode", "greedy") == mode}


def paired_points(rows: list[dict], a: str, b: str, mode: str = "greedy") -> float:
    """Mean of (a's outcome - b's outcome) in percentage points over the evaluation layouts
    both have (same seed, task and layout); nan when they share none."""
    wa, wb = eval_outcomes(rows, a, mode), eval_outcomes(rows, b, mode)
    common = sorted(wa.keys() & wb.keys())
    if not common:
        return math.nan
    return float(100 * np.mean([wa[k] - wb[k] for k in common]))


def eval_success(rows: list[dict], variant: str, mode: str = "greedy") -> float:
    """Final-evaluation success, the mean over (task, seed) of each one's rate; nan without."""
    won = eval_outcomes(rows, variant, mode)
    groups = sorted({k[:2] for k in won})
    if not groups:
        return math.nan
    return float(np.mean([np.mean([v for k, v in won.items() if k[:2] == g]) for g in groups]))


def hitl_ratio(rows: list[dict], base: str, w: int) -> float:
    """Episodes the help variant ``base``-hitl needs, per task and seed, until its rolling
    unassisted success reaches the no-help variant ``base``'s final rolling rate there (its
    full length when it never does), averaged, over the no-help variant's episodes per task;
    nan without both."""
    need, length = [], []
    for seed, task in sorted({(r["seed"], r["task"]) for r in rows if not r.get("eval")}):
        helped, alone = series(rows, base + HELP, seed, task), series(rows, base, seed, task)
        if helped and alone:
            need.append(episodes_to_reach(helped, w, rolling(alone, w)[-1]))
            length.append(len(alone))
    return float(np.mean(need) / np.mean(length)) if need else math.nan


def _fmt(x: float, spec: str) -> str:
    return "nan" if math.isnan(x) else format(x, spec)


def key_line(rows: list[dict], algorithms: list[str] | None = None, window: int = 20) -> str:
    """The benchmark's last line, for the best algorithm B (``best_algorithm``)."""
    variants = sorted({r["variant"] for r in rows})
    b = best_algorithm(variants, algorithms)
    return (f"critic_vs_frozen={_fmt(paired_points(rows, f'{b}-critic', FROZEN), '+.1f')} "
            f"critic_vs_sparse={_fmt(paired_points(rows, f'{b}-critic', f'{b}-sparse'), '+.1f')} "
            f"oracle_vs_frozen={_fmt(paired_points(rows, f'{b}-oracle', FROZEN), '+.1f')} "
            f"hitl_episodes_ratio={_fmt(hitl_ratio(rows, f'{b}-critic', window), '.3f')} "
            f"success_at_200={_fmt(eval_success(rows, f'{b}-critic'), '.3f')}")


# ---------------------------------------------------------------------- tables and plot
def rollout_table(rows: list[dict], variants: list[str], tasks: list[str], w: int, title: str):
    """First and last window of unassisted rollout success per variant and task."""
    from rich.table import Table

    seeds = sorted({r["seed"] for r in rows})
    table = Table(title=title)
    for col in ("variant", "task", "first window", "last window", "episodes to 90%",
                "interventions"):
        table.add_column(col)
    for v in variants:
        firsts, lasts, to90 = [], [], []
        for t in tasks:
            xs = [x for s in seeds if (x := series(rows, v, s, t))]
            if not xs:
                continue
            firsts.append(np.mean([np.mean(x[:w]) for x in xs]))
            lasts.append(np.mean([np.mean(x[-w:]) for x in xs]))
            to90.append(np.mean([episodes_to_reach(x, w, 0.9) for x in xs]))
            inter = sum(r.get("interventions", 0) for r in rows if not r.get("eval") and
                        r["variant"] == v and r["task"] == t)
            table.add_row(v, t, f"{firsts[-1]:.0%}", f"{lasts[-1]:.0%}", f"{to90[-1]:.0f}",
                          str(inter))
        if firsts:
            table.add_row(v, "mean", f"{np.mean(firsts):.0%}", f"{np.mean(lasts):.0%}",
                          f"{np.mean(to90):.0f}", "", end_section=True)
    return table


def final_eval_table(rows: list[dict], variants: list[str], tasks: list[str], mode: str):
    """Each variant's final policy on the shared evaluation layouts (greedy, sampling at the
    rollout temperature with the same noise for every variant, or the mean bin), and the paired
    difference (layout by layout, seed by seed) against the frozen control."""
    from rich.table import Table

    table = Table(title=f"final policies, {HOW[mode]}, on the same fixed evaluation layouts")
    for col in ("variant", *tasks, "mean", "vs frozen (paired)"):
        table.add_column(col)
    frozen = eval_outcomes(rows, FROZEN, mode)
    for v in variants:
        won = eval_outcomes(rows, v, mode)
        if not won:
            continue
        cells = [f"{np.mean(x):.0%}" if (x := [w for k, w in won.items() if k[1] == t])
                 else "-" for t in tasks]
        d = [won[k] - frozen[k] for k in won if k in frozen]
        diff = f"{100 * np.mean(d):+.0f} ± {100 * np.std(d) / np.sqrt(len(d)):.0f} " \
               f"(n={len(d)})" if d and v != FROZEN else ""
        table.add_row(v, *cells, f"{np.mean(list(won.values())):.0%}", diff)
    return table


def plot(rows: list[dict], variants: list[str], tasks: list[str], w: int, path: Path) -> None:
    """One panel per task: rolling unassisted success per variant, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, t in zip(axes[0], tasks, strict=True):
        for v in variants:
            curves = [rolling(x, w) for s in seeds if (x := series(rows, v, s, t))]
            if curves:
                n = min(len(c) for c in curves)
                ax.plot(np.arange(1, n + 1), np.mean([c[:n] for c in curves], 0), label=v)
        ax.set_title(t)
        ax.set_xlabel("episode")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel(f"unassisted success (rolling {w})")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict], out: Path, window: int, note: str = "",
           algorithms: list[str] | None = None) -> str:
    """Prints the tables, writes ``out/learning.png``, prints and returns the key line."""
    from rich.console import Console

    console = Console(width=140)
    variants = variant_order({r["variant"] for r in rows}, algorithms)
    tasks = list(dict.fromkeys(r["task"] for r in rows))  # the order they were run in
    seeds = sorted({r["seed"] for r in rows})
    episodes = 1 + max((r["episode"] for r in rows if not r.get("eval")), default=-1)
    title = (f"learning: unassisted success of the rollouts (window {window}), seed(s) "
             f"{', '.join(map(str, seeds))}, {episodes} episodes per task{note}")
    console.print(rollout_table(rows, variants, tasks, window, title))
    for mode in MODES:
        if any(r.get("eval") and r.get("mode", "greedy") == mode for r in rows):
            console.print(final_eval_table(rows, variants, tasks, mode))
    plot(rows, variants, tasks, window, out / "learning.png")
    print(f"plot: {out / 'learning.png'}")
    line = key_line(rows, algorithms, window)
    print(line)
    return line


# ---------------------------------------------------------------------- results on disk
def result_name(variant: str, seed: int) -> str:
    return f"{variant}-s{seed}.json"


def load_results(dirs: list[Path]) -> tuple[list[dict], list[str] | None]:
    """Every job's rows in these folders, and the --algorithms of the first run.json found
    (None without one). The same (variant, seed) in two files is an error naming both."""
    seen: dict[tuple[str, int], Path] = {}
    rows: list[dict] = []
    algorithms = None
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ValueError(f"{d} is not a folder")
        if algorithms is None and (d / "run.json").exists():
            algorithms = json.loads((d / "run.json").read_text()).get("algorithms")
        for f in sorted(d.glob(RESULTS_GLOB)):
            variant, _, seed = f.stem.rpartition("-s")
            if not seed.isdigit():
                continue
            key = (variant, int(seed))
            if key in seen:
                raise ValueError(f"{variant} seed {seed} is in both {seen[key]} and {f}: "
                                 "combine runs of different seeds")
            seen[key] = f
            rows += json.loads(f.read_text())
    if not rows:
        raise ValueError(f"no results ({RESULTS_GLOB}) in {', '.join(map(str, dirs))}")
    return rows, algorithms

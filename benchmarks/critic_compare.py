"""Critic variants side by side: the test-task metrics of several `benchmarks/critic.py`
result folders (each a training setting on the same data), per seed and as mean ± standard
deviation over seeds, with each variant's difference from the first (the control).

A variant's seeds differ in initialisation and in the stream of training pairs, and so does
the control's; the control's own seed-to-seed spread is the yardstick a difference is read
against (printed on the control's row).

    python benchmarks/critic_compare.py benchmarks/out/critic-ml45 \
        benchmarks/out/critic-ml45-generic benchmarks/out/critic-ml45-fdrop

Writes ``--out`` (default ``benchmarks/out/critic-compare``): compare.json and compare.png
(one panel per metric, a dot per seed). Ends with
``best=<variant> best_voc_direct_test=<x> control_voc_direct_test=<y> control_sd=<s>``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

METRICS = {"voc_direct_test": "voc_unseen_direct", "auc_test": "auc_unseen",
           "negatives_ok": "negatives_ok_unseen", "ref_gain": "ref_gain_unseen",
           "voc_generic": "voc_unseen_generic", "voc_generic_ref": "voc_unseen_generic_ref",
           "voc_seen_direct": "voc_seen_direct"}
OUT = Path(__file__).parent / "out" / "critic-compare"


def read_variant(folder: Path) -> dict[str, list[float]]:
    """metric -> the per-seed values (seed order) of one result folder's summary.json."""
    path = folder / "summary.json"
    if not path.exists():
        raise FileNotFoundError(f"no summary.json in {folder}: run benchmarks/critic.py "
                                f"--out {folder} first")
    per_seed = json.loads(path.read_text())["per_seed"]
    seeds = sorted(per_seed, key=int)
    return {name: [float("nan") if per_seed[s].get(key) is None else float(per_seed[s][key])
                   for s in seeds] for name, key in METRICS.items()}


def mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, sd


def compare(variants: dict[str, dict[str, list[float]]]) -> dict:
    """Per variant and metric: n, mean, sd and the difference of means from the first."""
    names = list(variants)
    control = {k: mean_sd(v)[0] for k, v in variants[names[0]].items()}
    out = {}
    for name in names:
        out[name] = {}
        for metric, values in variants[name].items():
            m, sd = mean_sd(values)
            out[name][metric] = {"n": sum(not math.isnan(v) for v in values), "mean": m,
                                 "sd": sd, "vs_control": m - control[metric],
                                 "seeds": values}
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["voc_direct_test", "auc_test", "negatives_ok", "ref_gain"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2))
    names = list(result)
    for ax, metric in zip(axes, metrics, strict=True):
        for x, name in enumerate(names):
            row = result[name][metric]
            ax.scatter([x] * len(row["seeds"]), row["seeds"], s=14, alpha=0.7)
            ax.errorbar([x], [row["mean"]], yerr=[row["sd"]], fmt="_k", capsize=4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    fig.suptitle("critic variants on the ML45 test tasks (dots: seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="result folders; the first is "
                    "the control")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    variants = {f.name: read_variant(f) for f in args.folders}
    result = compare(variants)
    table = Table(title="test tasks: mean ± sd over seeds (difference from the control)")
    table.add_column("variant")
    table.add_column("seeds")
    for metric in METRICS:
        table.add_column(metric)
    for i, (name, row) in enumerate(result.items()):
        cells = [f"{r['mean']:.3f} ± {r['sd']:.3f}"
                 + ("" if i == 0 else f" ({r['vs_control']:+.3f})") for r in row.values()]
        table.add_row(name, str(row["voc_direct_test"]["n"]), *cells)
    Console(width=200).print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "compare.png")
    best = max(result, key=lambda n: result[n]["voc_direct_test"]["mean"])
    ctrl = result[next(iter(result))]["voc_direct_test"]
    print(f"best={best} best_voc_direct_test={result[best]['voc_direct_test']['mean']:.3f} "
          f"control_voc_direct_test={ctrl['mean']:.3f} control_sd={ctrl['sd']:.3f}")
    return result


if __name__ == "__main__":
    main()

"""``learner_curves.png``: the learner's log, one panel per quantity, against the version."""

from __future__ import annotations

from pathlib import Path

PANELS = [("return (mean per episode)", ["return_mean"]),
          ("success rate of consumed episodes", ["success_rate"]),
          ("losses", ["pg_loss", "v_loss", "bc_loss"]), ("approx KL", ["approx_kl"]),
          ("clip fraction", ["clipfrac"]), ("importance weight (mean)", ["mean_weight"])]


def plot_curves(log_rows: list[dict], path: Path) -> None:
    """Returns, success rate, losses, approx KL, clip fraction and importance weight."""
    if not log_rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = [r["version"] for r in log_rows]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (title, keys) in zip(axes.flat, PANELS, strict=True):
        for k in keys:
            ax.plot(v, [r.get(k, float("nan")) for r in log_rows], marker=".", label=k)
        ax.set_title(title)
        ax.set_xlabel("policy version")
        if len(keys) > 1:
            ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

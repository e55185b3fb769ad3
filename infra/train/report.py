"""`vlac train`'s report in ``WORKDIR/report/``: success vs episodes per task
(``success.png``), versions pushed and when, throughput, interventions, the critic's VOC,
PPO's mean importance weight and the starting against the final policy on fixed layouts, as
``report.md`` + ``report.json``. Success counts only what the policy did alone
(``vlac.shared.hitl.unassisted``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console

from vlac.infra.train.config import Paths, TrainConfig
from vlac.infra.train.watch import policy_episodes
from vlac.shared.config import to_dict
from vlac.shared.hitl import unassisted


def rolling(x: list[bool], w: int) -> np.ndarray:
    x_ = np.asarray(x, float)
    return np.array([x_[max(0, i - w + 1):i + 1].mean() for i in range(len(x_))])


def solo_outcomes(eps: list[dict], taken: list[int]) -> dict[str, list[bool]]:
    """Per task, in completion order: did the policy succeed on its own? An episode with
    ``taken`` > 0 operator takeover steps does not count, nor does one that its robot
    restarted from a saved state (return and explore: its previous episode ended
    ``returned``)."""
    out: dict[str, list[bool]] = {}
    last_reason: dict[str, str] = {}
    for e, n in zip(eps, taken, strict=True):
        restarted = last_reason.get(e["robot_id"]) == "returned"
        last_reason[e["robot_id"]] = e["outcome"].get("reason", "")
        out.setdefault(e.get("task_id") or e["task"], []).append(
            unassisted(e["outcome"]["success"], n, restarted))
    return out


def _evaluate(job: tuple[str, list[str], int, int]) -> tuple[int, dict]:
    """One policy, greedy, on the fixed evaluation layouts (a child process: one thread).
    Returns the policy's version and the results per task."""
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    from vlac.cloud.actor.model import TorchActor
    from vlac.infra.evaluate import ActorPolicy, evaluate

    path, tasks, episodes, max_steps = job
    actor = TorchActor.load(path)
    return actor.version, evaluate(lambda: ActorPolicy(actor, greedy=True), tasks, episodes,
                                   max_steps=max_steps, console=Console(quiet=True))


def final_eval(cfg: TrainConfig, p: Paths, actor: Path) -> dict | None:
    """The starting and the final policy on the same fixed layouts, in two processes."""
    final = p.learner / "actor.pt"
    if not cfg.final_eval or not final.exists():
        return None
    jobs = [(str(path), cfg.tasks, cfg.final_eval, cfg.max_steps) for path in (actor, final)]
    with mp.get_context("spawn").Pool(2) as pool:
        (_, start), (final_version, end) = pool.map(_evaluate, jobs)
    diff = [int(b) - int(a) for t in cfg.tasks
            for a, b in zip(start[t]["outcomes"], end[t]["outcomes"], strict=True)]
    return {"episodes_per_task": cfg.final_eval, "final_version": final_version,
            "start": {t: start[t]["success_rate"] for t in cfg.tasks},
            "final": {t: end[t]["success_rate"] for t in cfg.tasks},
            "paired_diff": float(np.mean(diff)),
            "paired_se": float(np.std(diff) / np.sqrt(len(diff)))}


def episode_columns(p: Paths, eps: list[dict]) -> tuple[list[int], list[int]]:
    """Per episode: its operator takeover steps and the policy version it ran."""
    from vlac.cloud.store.episodes import EpisodeStore

    store = EpisodeStore(p.store, read_only=True)
    taken, versions = [], []
    for e in eps:
        cols = store.load_columns(e["robot_id"], e["episode_id"],
                                  ["intervention", "policy_version"])
        taken.append(int(np.asarray(cols["intervention"]).sum()))
        versions.append(int(np.asarray(cols["policy_version"])[0]))
    return taken, versions


def task_rows(by_task: dict[str, list[bool]], w: int) -> dict[str, dict]:
    return {task: {"episodes": len(wins), "first": float(np.mean(wins[:w])),
                   "last": float(np.mean(wins[-w:]))} for task, wins in sorted(by_task.items())}


def plot(cfg: TrainConfig, p: Paths, eps: list[dict], by_task: dict[str, list[bool]],
         versions_seen: list[int], evaluation: dict | None, helped: bool, w: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3 if evaluation else 2, figsize=(17 if evaluation else 12, 4))
    for task, wins in sorted(by_task.items()):
        r = rolling(wins, w)
        line, = ax[0].plot(np.arange(1, len(r) + 1), r, label=task)
        if helped:  # the same episodes, counting the ones the operator finished
            raw = rolling([bool(e["outcome"]["success"]) for e in eps
                           if (e.get("task_id") or e["task"]) == task], w)
            ax[0].plot(np.arange(1, len(raw) + 1), raw, ls="--", color=line.get_color(),
                       label=f"{task}, with help")
    ax[0].set(xlabel="episode of the task", ylabel=f"success (rolling {w})",
              ylim=(-0.02, 1.02),
              title="rollouts, sampled: success alone\n(an episode with a takeover counts as a "
              "failure; dashed: with help)" if helped else "rollouts, sampled: success")
    if by_task:
        ax[0].legend(fontsize=8)
    ax[1].plot(np.arange(1, len(versions_seen) + 1), versions_seen)
    ax[1].set(xlabel="episode (all robots)", ylabel="policy version",
              title="version each episode ran")
    if evaluation:
        x = np.arange(len(cfg.tasks))
        for k, (key, label) in enumerate((("start", "starting policy"),
                                          ("final", f"final (v{evaluation['final_version']})"))):
            ax[2].bar(x + (k - 0.5) * 0.4, [evaluation[key][t] for t in cfg.tasks], 0.4,
                      label=label)
        ax[2].set_xticks(x, [t.removesuffix("-v3") for t in cfg.tasks], fontsize=8)
        ax[2].set(ylim=(0, 1.02), ylabel="success, greedy, no help",
                  title=f"start vs final policy: the same {cfg.final_eval} fixed layouts\n"
                  f"per task, greedy, alone (paired {evaluation['paired_diff']:+.0%})")
        ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(p.report / "success.png", dpi=110)
    plt.close(fig)


def critic_voc(cfg: TrainConfig, p: Paths, critic: Path, console: Console) -> float | None:
    """The critic's VOC on held-out demonstrations (None, said on the console, if it fails:
    the report must still be written)."""
    try:
        from vlac.cloud.critic.evaluate import CriticEvalConfig
        from vlac.cloud.critic.evaluate import main as critic_eval

        res = critic_eval(CriticEvalConfig(store_root=p.store, critic=critic,
                                           out=p.report / "critic", features=p.features,
                                           seen_tasks=cfg.tasks, unseen_tasks=[]),
                          Console(width=120, quiet=True))
        return res.get("summary", {}).get("voc_seen")
    except Exception as e:
        console.print(f"critic VOC not measured: {e}")
        return None


def markdown(cfg: TrainConfig, s: dict) -> str:
    rl_s, evaluation = s["rl_seconds"], s["final_eval"]
    md = ["# vlac train report\n", "![success](success.png)\n",
          "| task | episodes | first window | last window |", "|---|---|---|---|"]
    md += [f"| {t} | {r['episodes']} | {r['first']:.0%} | {r['last']:.0%} |"
           for t, r in s["tasks"].items()]
    md += ["", "An episode counts as a success only if the policy did it alone: one with an "
           "operator takeover, or one restarted from a saved state, counts as a failure.", "",
           f"- versions published: {s['versions_published']}",
           f"- episodes: {s['episodes']}, {s['steps']} steps, {s['steps_per_s'] or 0:.1f} "
           f"steps/s during RL ({rl_s / 60:.1f} min)",
           f"- interventions: {s['intervention_steps']} takeover steps, {s['returns']} "
           "return-and-explore restarts", f"- critic VOC on held-out demos: "
           f"{s['critic_voc_heldout']}",
           f"- robots ran the {cfg.precision} ONNX actor, sampling at temperature "
           f"{cfg.temperature}; the learner ran {s['algorithm']}" + (
               f"; PPO's mean importance weight (1: the robots sampled what the learner "
               f"scores): {s['mean_importance_weight']:.2f}"
               if s["mean_importance_weight"] is not None else ""),
           f"- human-in-the-loop: {s['hitl']}"]
    if evaluation:
        md += ["", f"Starting policy against the final one (v{evaluation['final_version']}), "
               f"greedy, on the same {cfg.final_eval} fixed evaluation layouts per task:", "",
               "| task | start | final |", "|---|---|---|"]
        md += [f"| {t} | {evaluation['start'][t]:.0%} | {evaluation['final'][t]:.0%} |"
               for t in cfg.tasks]
        md += ["", f"Paired difference (final - start, layout by layout): "
               f"{evaluation['paired_diff']:+.0%} ± {evaluation['paired_se']:.0%} (one "
               "standard error)."]
    return "\n".join(md) + "\n"


def report(cfg: TrainConfig, p: Paths, critic: Path, actor: Path, console: Console,
           t_start: float, t_rl: float) -> dict:
    from rich.table import Table

    from vlac.cloud.fleet.state import open_fleet_state

    p.report.mkdir(parents=True, exist_ok=True)
    eps = policy_episodes(p.store)
    taken, versions_seen = episode_columns(p, eps)
    by_task = solo_outcomes(eps, taken)
    returns = sum(e["outcome"].get("reason") == "returned" for e in eps)
    rl_s = time.time() - t_rl
    evaluation = final_eval(cfg, p, actor)
    w = max(4, min(20, len(eps) // max(1, 4 * len(by_task))))
    rows = task_rows(by_task, w)
    plot(cfg, p, eps, by_task, versions_seen, evaluation, any(taken) or returns > 0, w)
    fleet = open_fleet_state(p.fleet)
    versions = fleet.versions()
    fleet.close()
    voc = critic_voc(cfg, p, critic, console)
    steps = sum(e["n_steps"] for e in eps)
    log = p.learner / "learner_log.json"
    weights = [u["mean_weight"] for u in (json.loads(log.read_text())["log"] if log.exists()
                                          else []) if "mean_weight" in u]
    summary = {"episodes": len(eps), "tasks": rows, "versions_published": len(versions),
               "versions": [{"version": v["version"], "created_at": v["created_at"]}
                            for v in versions],
               "episode_versions": versions_seen, "steps": steps,
               "intervention_steps": sum(taken), "returns": returns,
               "critic_voc_heldout": voc, "rl_seconds": rl_s,
               "steps_per_s": steps / rl_s if rl_s > 0 else None,
               "total_seconds": time.time() - t_start, "hitl": to_dict(cfg.hitl),
               "precision": cfg.precision, "temperature": cfg.temperature,
               "algorithm": cfg.algorithm.name,
               "mean_importance_weight": float(np.mean(weights)) if weights else None,
               "final_eval": evaluation}
    (p.report / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    (p.report / "report.md").write_text(markdown(cfg, summary))
    table = Table(title=f"vlac train: success per task (rolling {w})")
    for col in ("task", "episodes", "first window", "last window"):
        table.add_column(col)
    for task, r in rows.items():
        table.add_row(task, str(r["episodes"]), f"{r['first']:.0%}", f"{r['last']:.0%}")
    console.print(table)
    console.print(f"report: {p.report / 'report.md'} and {p.report / 'success.png'}")
    return summary

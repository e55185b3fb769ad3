"""`vlac critic eval`: the paper's metric and the negatives, on held-out data.

- VOC (value-order correlation): along an episode, progress is accumulated from the critic's
  deltas between consecutive frames; VOC is the Spearman correlation of that progress with
  time. Reported per task on held-out successful episodes of the training tasks ("seen") and
  on every successful episode of tasks left out of training ("unseen"), each with and
  without the one-shot reference (frames of one other demonstration of the same task).
  Accumulated VOC rewards a critic that merely says "a bit forward" for every pair, so VOC
  from the first frame (delta(o_0, o_t) against t, "direct") is reported beside it, and
  direct VOC under a generic sentence that names no task ("generic"), with and without the
  reference: whether the reference alone can say what the task is.
- Negatives, judged on the decoded delta (the reward the learner gets): static pairs (a
  frame with itself) must score <= +0.005 (it rounds to the zero token or below); reversed
  pairs (later frame first, at least 4 steps apart) must score < 0; mismatched sentences (a
  forward pair with another task's sentence) must score <= +0.02 and not done. The same
  checks on the argmax token are reported too.
- Done precision/recall: pairs (first frame, frame t) of held-out successful episodes, done
  for t in the last 5% (at least 2 steps, as labelled in training), and the last frames of
  failed episodes (never done); at 0.5, and at the threshold chosen on half the episodes
  for precision >= 0.9 (``done.calibrate``), judged on the other half. That threshold is
  what ``--rewards.done-threshold`` should be before done ends episodes.
- Success against failure: the AUC of the final progress delta(o_0, o_T) of each task's
  successful against its failed episodes (0.5 is chance; None for a task with only one
  outcome), with and without the reference: can the critic's reward tell them apart.
Every metric is reported per task as well as per split, and the done threshold chosen on
the seen tasks is judged on the unseen ones too (a new task has no validation data).
Writes a table, ``eval.json`` and plots (progress along a successful and a failed episode).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import mannwhitneyu, spearmanr

from vlac.cloud.critic.data import EpisodeFeatures, done_from, load_episodes, split_holdout
from vlac.cloud.critic.done import calibrate, precision_recall, split_episodes
from vlac.cloud.critic.model import SmallVLACCritic, accumulated_progress, write_json
from vlac.cloud.critic.train import TRAIN_TASKS, UNSEEN_TASKS
from vlac.cloud.models.encoders import FeatureCache
from vlac.cloud.models.vlac import PROGRESS_BINS
from vlac.cloud.store.location import open_episode_store, store_location
from vlac.shared import tasks as task_text
from vlac.shared.config import check, opt

ZERO_TOKEN = (PROGRESS_BINS - 1) // 2


@dataclass
class CriticEvalConfig:
    store_root: Path | str = opt(Path(".cache/store"), "Episode store with demonstrations "
                                 "(a folder or s3://BUCKET/PREFIX?endpoint=URL).")
    critic: Path = opt(Path(".cache/critic/critic.pt"), "Critic checkpoint to evaluate.")
    out: Path = opt(Path(".cache/critic/eval"), "Folder for eval.json and plots.")
    features: Path = opt(Path(".cache/critic/features"), "Image feature cache.")
    seen_tasks: list[str] = opt(TRAIN_TASKS, "Training tasks (held-out episodes are used).")
    unseen_tasks: list[str] = opt(UNSEEN_TASKS, "Tasks the critic never trained on.")
    holdout: int = opt(2, "Held-out episodes per training task (as in training).")
    camera: str = opt("corner", "Camera the critic sees.")
    seed: int = opt(0, "Seed for choosing references and mismatched sentences.")

    def __post_init__(self) -> None:
        self.store_root, self.critic = store_location(self.store_root), Path(self.critic)
        self.out, self.features = Path(self.out), Path(self.features)
        check(self.critic.exists(), "critic", f"{self.critic} does not exist; train one with "
              "`vlac critic train`")


def _critique(critic: SmallVLACCritic, sentence: str, fa: np.ndarray, fb: np.ndarray,
              ref=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    text = np.repeat(critic.text_encoder.encode([sentence]), len(fa), 0)
    return critic.critique_tokens(text, fa, fb, ref)


def _spearman(x: np.ndarray) -> float:
    v = float(spearmanr(x, np.arange(len(x))).statistic)
    return 0.0 if np.isnan(v) else v


def episode_voc(critic, ep: EpisodeFeatures, sentence: str, ref=None
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """Accumulated VOC, the progress curve and the done probabilities along the episode."""
    d, p, _ = _critique(critic, sentence, ep.feats[:-1], ep.feats[1:], ref)
    prog = accumulated_progress(d)
    return _spearman(prog), prog, np.concatenate([[p[0]], p])


def direct_voc(critic, ep: EpisodeFeatures, sentence: str, ref=None) -> float:
    d, _, _ = _critique(critic, sentence, np.repeat(ep.feats[:1], len(ep), 0), ep.feats, ref)
    return _spearman(d)


def final_progress(critic, ep: EpisodeFeatures, sentence: str, ref=None) -> float:
    """delta(o_0, o_T): the progress the critic credits the whole episode with."""
    d, _, _ = _critique(critic, sentence, ep.feats[:1], ep.feats[-1:], ref)
    return float(d[0])


def success_auc(successes: list[float], failures: list[float]) -> float | None:
    """P(a success scores above a failure), ties counting half (the Mann-Whitney AUC);
    None without both outcomes."""
    if not successes or not failures:
        return None
    return float(mannwhitneyu(successes, failures).statistic / (len(successes) * len(failures)))


def negatives(critic, ep: EpisodeFeatures, sentence: str, other: str,
              rng: random.Random) -> dict[str, list[bool]]:
    t = len(ep)
    d, _, tok = _critique(critic, sentence, ep.feats, ep.feats)
    out = {"static": list(d <= 0.005), "static_token": list(tok <= ZERO_TOKEN)}
    pairs = [(i, j) for i in range(t) for j in range(t) if j >= i + 4]
    pairs = rng.sample(pairs, min(40, len(pairs))) if pairs else []
    if pairs:
        ia, ib = np.array(pairs).T
        d, _, tok = _critique(critic, sentence, ep.feats[ib], ep.feats[ia])
        out["reversed"], out["reversed_token"] = list(d < 0), list(tok < ZERO_TOKEN)
        d, done, tok = _critique(critic, other, ep.feats[ia], ep.feats[ib])
        out["mismatched"] = list((d <= 0.02) & (done < 0.5))
        out["mismatched_token"] = list((tok <= ZERO_TOKEN + 2) & (done < 0.5))
    return out


_NEGATIVE_KINDS = ("static", "reversed", "mismatched", "static_token", "reversed_token",
                   "mismatched_token")


@dataclass
class _Episodes:
    """The episodes one evaluation reads."""

    seen_all: list[EpisodeFeatures]  # every episode of the training tasks
    train: list[EpisodeFeatures]  # those training used (the seen references come from here)
    held: list[EpisodeFeatures]  # those it held out
    unseen: list[EpisodeFeatures]  # every episode of the tasks left out of training


@dataclass
class _Scores:
    """What the per-episode pass collects beside the VOC rows."""

    neg: dict[str, dict[str, list[bool]]]  # group -> negative kind -> judged correctly
    curves: dict[str, tuple]  # plot name -> (episode, progress, done probabilities)


def _load(cfg: CriticEvalConfig) -> _Episodes:
    store = open_episode_store(cfg.store_root, read_only=True)
    cache = FeatureCache(cfg.features)
    seen_all = load_episodes(store, cache, cfg.seen_tasks, cfg.camera)
    train_eps, held = split_holdout(seen_all, cfg.holdout)
    unseen = load_episodes(store, cache, cfg.unseen_tasks, cfg.camera)
    if not held:
        raise ValueError("no held-out episodes of the training tasks; collect more demos or "
                         "set --holdout")
    return _Episodes(seen_all=seen_all, train=train_eps, held=held, unseen=unseen)


def _score_group(critic, cfg: CriticEvalConfig, rng: random.Random, group: str,
                 eps: list[EpisodeFeatures], refs: list[EpisodeFeatures],
                 scores: _Scores) -> dict:
    """Per task of one group's episodes: VOC (accumulated and direct, with and without a
    reference) and the negatives on its successes, the final-progress AUC on all of them;
    adds the negatives and the first curve to scores."""
    per_task: dict[str, dict[str, list]] = {}
    for ep in eps:
        sentence = ep.sentence
        pool = [e for e in refs if e.task_id == ep.task_id and e is not ep and e.success]
        ref = rng.choice(pool).reference() if pool else None
        row = per_task.setdefault(ep.task_id, {k: [] for k in _ROW_LISTS})
        final = row["final_ok" if ep.success else "final_failed"]
        final_ref = row["final_ref_ok" if ep.success else "final_ref_failed"]
        final.append(final_progress(critic, ep, sentence))
        if ref is not None:
            final_ref.append(final_progress(critic, ep, sentence, ref))
        if not ep.success:
            continue
        voc, prog, done = episode_voc(critic, ep, sentence)
        row["voc"].append(voc)
        row["direct"].append(direct_voc(critic, ep, sentence))
        generic = task_text.GENERIC_SENTENCES[0]  # the task only in the reference
        row["direct_generic"].append(direct_voc(critic, ep, generic))
        if ref is not None:
            row["voc_ref"].append(episode_voc(critic, ep, sentence, ref)[0])
            row["direct_ref"].append(direct_voc(critic, ep, sentence, ref))
            row["direct_generic_ref"].append(direct_voc(critic, ep, generic, ref))
        scores.curves.setdefault(f"{group}-success", (ep, prog, done))
        others = [t for t in cfg.seen_tasks + cfg.unseen_tasks if t != ep.task_id]
        n = negatives(critic, ep, sentence, task_text.instruction(rng.choice(others), rng), rng)
        for k, v in n.items():
            scores.neg[group][k] += v
            row.setdefault(k, []).extend(v)
    return {t: _task_row(v) for t, v in sorted(per_task.items()) if v["voc"]}


_ROW_LISTS = ("voc", "voc_ref", "direct", "direct_ref", "direct_generic",
              "direct_generic_ref", "final_ok", "final_failed", "final_ref_ok",
              "final_ref_failed")


def _mean(x: list) -> float | None:
    return float(np.mean(x)) if x else None


def _task_row(v: dict[str, list]) -> dict:
    return {"voc": _mean(v["voc"]), "voc_ref": _mean(v["voc_ref"]),
            "voc_direct": _mean(v["direct"]), "voc_direct_ref": _mean(v["direct_ref"]),
            "voc_generic": _mean(v["direct_generic"]),
            "voc_generic_ref": _mean(v["direct_generic_ref"]),
            "auc": success_auc(v["final_ok"], v["final_failed"]),
            "auc_ref": success_auc(v["final_ref_ok"], v["final_ref_failed"]),
            "static": _mean(v.get("static", [])), "reversed": _mean(v.get("reversed", [])),
            "mismatched": _mean(v.get("mismatched", [])),
            "episodes": len(v["voc"]), "failed": len(v["final_failed"])}


def _done_scores(critic, held: list[EpisodeFeatures], failed: list[EpisodeFeatures]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Done probabilities and labels: (first, t) pairs of successful episodes (done in the
    labelled tail) and the last frame of failed ones (never done)."""
    probs, truth = [np.zeros(0)], [np.zeros(0, bool)]
    for ep in held:
        t = len(ep)
        _, p, _ = _critique(critic, ep.sentence, np.repeat(ep.feats[:1], t, 0), ep.feats)
        probs.append(np.asarray(p, np.float64))
        truth.append(np.arange(t) >= done_from(t))
    for ep in failed:
        _, p, _ = _critique(critic, ep.sentence, ep.feats[:1], ep.feats[-1:])
        probs.append(np.asarray(p, np.float64))
        truth.append(np.zeros(1, bool))
    return np.concatenate(probs), np.concatenate(truth)


def _done_metrics(critic, held: list[EpisodeFeatures], failed: list[EpisodeFeatures],
                  seed: int = 0) -> dict:
    """Done precision/recall at 0.5 on all of it, and the threshold chosen on half the
    episodes (``done.calibrate``) judged on the other half."""
    precision, recall = precision_recall(*_done_scores(critic, held, failed), 0.5)
    (hv, ht), (fv, ft) = split_episodes(held, seed), split_episodes(failed, seed)
    cal = calibrate(_done_scores(critic, hv, fv), _done_scores(critic, ht, ft))
    return {"precision": precision, "recall": recall, "failed_final_frames": len(failed),
            "calibration": cal}


def _done_transfer(critic, seen: tuple[list, list], unseen: tuple[list, list],
                   seed: int = 0) -> dict:
    """The done threshold chosen on the seen tasks' held-out successes and their failures
    (validation half), judged on every unseen episode: what a new task gets."""
    (hv, _), (fv, _) = split_episodes(seen[0], seed), split_episodes(seen[1], seed)
    cal = calibrate(_done_scores(critic, hv, fv), _done_scores(critic, *unseen))
    return {"threshold": cal["threshold"], "unseen_at_threshold": cal["test_at_threshold"],
            "unseen_at_0.5": cal["test_at_0.5"], "unseen_frames": cal["test_frames"]}


def _summary(results: dict, neg: dict[str, dict[str, list[bool]]]) -> dict:
    cal = results["done"]["calibration"]
    sr = [x for g in neg.values() for x in g["static"] + g["reversed"]]
    mm = [x for g in neg.values() for x in g["mismatched"]]
    unseen_rows = results["voc"].get("unseen", {})
    u = neg.get("unseen", {})
    unseen_sr = u.get("static", []) + u.get("reversed", [])
    transfer = results["done_transfer"]["unseen_at_threshold"] or (None, None)
    direct, direct_ref = (_mean_voc(unseen_rows, k) for k in ("voc_direct", "voc_direct_ref"))
    return {
        "voc_seen": _mean_voc(results["voc"]["seen"], "voc"),
        "voc_seen_ref": _mean_voc(results["voc"]["seen"], "voc_ref"),
        "voc_seen_direct": _mean_voc(results["voc"]["seen"], "voc_direct"),
        "voc_unseen": _mean_voc(unseen_rows, "voc"),
        "voc_unseen_ref": _mean_voc(unseen_rows, "voc_ref"),
        "voc_unseen_direct": _mean_voc(unseen_rows, "voc_direct"),
        "negatives_ok": float(np.mean(sr)) if sr else 0.0,
        "mismatched_ok": float(np.mean(mm)) if mm else None,
        "done_precision": results["done"]["precision"],
        "done_recall": results["done"]["recall"],
        "done_threshold": cal["threshold"],
        "done_precision_test": (cal["test_at_threshold"] or (None, None))[0],
        "done_recall_test": (cal["test_at_threshold"] or (None, None))[1],
        "voc_unseen_direct_ref": direct_ref,
        "ref_gain_unseen": None if direct is None or direct_ref is None else direct_ref - direct,
        "voc_unseen_generic": _mean_voc(unseen_rows, "voc_generic"),
        "voc_unseen_generic_ref": _mean_voc(unseen_rows, "voc_generic_ref"),
        "auc_unseen": _mean_voc(unseen_rows, "auc"),
        "auc_unseen_ref": _mean_voc(unseen_rows, "auc_ref"),
        "negatives_ok_unseen": float(np.mean(unseen_sr)) if unseen_sr else None,
        "done_precision_unseen": transfer[0],
        "done_recall_unseen": transfer[1],
    }


def main(cfg: CriticEvalConfig, console: Console | None = None) -> dict:
    console = console or Console(width=110)
    rng = random.Random(cfg.seed)
    critic = SmallVLACCritic.load(cfg.critic)
    eps = _load(cfg)
    unseen_ok = [e for e in eps.unseen if e.success]
    unseen_failed = [e for e in eps.unseen if not e.success]
    groups = {"seen": eps.held, "unseen": eps.unseen}  # (failures: the AUC only)
    refs_pool = {"seen": eps.train, "unseen": unseen_ok}
    results: dict = {"voc": {}, "negatives": {}, "done": {}}
    scores = _Scores(neg={g: {k: [] for k in _NEGATIVE_KINDS} for g in groups}, curves={})
    for group, group_eps in groups.items():
        results["voc"][group] = _score_group(critic, cfg, rng, group, group_eps,
                                             refs_pool[group], scores)
    failed = [e for e in eps.seen_all + eps.unseen if not e.success]
    seen_failed = [e for e in eps.seen_all if not e.success]
    results["done"] = _done_metrics(critic, eps.held, failed, cfg.seed)
    results["done_transfer"] = _done_transfer(critic, (eps.held, seen_failed),
                                              (unseen_ok, unseen_failed), cfg.seed)
    if failed:
        ep = failed[0]
        _, prog, done = episode_voc(critic, ep, ep.sentence)
        scores.curves["failed"] = (ep, prog, done)
    results["negatives"] = {g: {k: (float(np.mean(v)) if v else None, len(v))
                                for k, v in kv.items()} for g, kv in scores.neg.items()}
    results["summary"] = _summary(results, scores.neg)
    _print(console, results)
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json(cfg.out / "eval.json", results)
    _plot(scores.curves, cfg.out / "progress_curves.png")
    console.print(f"plots and eval.json in {cfg.out}")
    return results


def _mean_voc(rows: dict, key: str) -> float | None:
    vals = [r[key] for r in rows.values() if r[key] is not None]
    return float(np.mean(vals)) if vals else None


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print(console: Console, r: dict) -> None:
    table = Table(title="critic per task (ref: with the one-shot reference; AUC: final "
                  "progress of successes vs failures; negatives: share judged right)")
    for col in ("split", "task", "ok/failed", "VOC direct", "direct ref", "generic",
                "generic ref", "VOC", "VOC ref", "AUC", "AUC ref", "static", "reversed",
                "mismatched"):
        table.add_column(col)
    for group, rows in r["voc"].items():
        for task, v in rows.items():
            table.add_row(group, task, f"{v['episodes']}/{v['failed']}",
                          *[_fmt(v[k]) for k in ("voc_direct", "voc_direct_ref",
                                                 "voc_generic", "voc_generic_ref", "voc",
                                                 "voc_ref", "auc", "auc_ref", "static",
                                                 "reversed", "mismatched")])
    console.print(table)
    t3 = Table(title="critic: negatives (share judged correctly)")
    for col in ("split", "static", "reversed", "mismatched", "static (token)",
                "reversed (token)", "mismatched (token)"):
        t3.add_column(col)
    for group, kv in r["negatives"].items():
        t3.add_row(group, *[f"{_fmt(kv[k][0])} (n={kv[k][1]})" for k in
                            ("static", "reversed", "mismatched", "static_token",
                             "reversed_token", "mismatched_token")])
    console.print(t3)
    s = r["summary"]
    t2 = Table(title="critic: summary")
    t2.add_column("metric")
    t2.add_column("value")
    for k, v in s.items():
        t2.add_row(k, _fmt(v))
    console.print(t2)


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.3), squeeze=False)
    for ax, (name, (ep, prog, done)) in zip(axes[0], curves.items(), strict=True):
        t = np.arange(len(prog))
        ax.plot(t, prog, label="accumulated progress")
        if ep.success:
            ax.plot(t, t / max(1, len(t) - 1), "--", color="gray", label="time (ideal)")
        ax.plot(t, done, ":", label="done prob")
        ax.set_title(f"{name}: {ep.task_id}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

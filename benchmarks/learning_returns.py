"""Does the critic's return tell the fleet's successes from its failures? Per task, over a
store's rollouts: the return the learner would give each episode (critic progress since the
first frame, without the success bonus, which would decide the question by itself), and
the AUC of that return for success against failure, over all pairs of episodes and over
pairs that started from the same state only (groups of ``--layout-repeats``): the second is
what group advantages from the same start see.

    python benchmarks/learning_returns.py .cache/bench/learning-start/ppo-critic-s0/store

It ends with ``auc_all=<x> auc_same_start=<y>`` (means over tasks; ``nan`` where a task has
no success/failure pair).
"""

from __future__ import annotations

import argparse
import warnings
from collections import defaultdict

import numpy as np


def pair_auc(scores: np.ndarray, success: np.ndarray, groups: list[str] | None = None) -> float:
    """P(score of a success > score of a failure), ties counting half, over all pairs or
    (``groups``) over pairs within a group; nan without such a pair."""
    scores, success = np.asarray(scores, np.float64), np.asarray(success, bool)
    names = np.asarray(groups if groups is not None else [""] * len(scores))
    wins = pairs = 0.0
    for g in set(names.tolist()):
        m = names == g
        pos, neg = scores[m & success], scores[m & ~success]
        if len(pos) and len(neg):
            diff = pos[:, None] - neg[None, :]
            wins += float((diff > 0).sum() + 0.5 * (diff == 0).sum())
            pairs += diff.size
    return wins / pairs if pairs else float("nan")


def episode_returns(store_root: str, critic_path: str, camera: str) -> list[dict]:
    """Per rollout in the store: task, start fingerprint, success and critic return."""
    import torch

    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.critic.service import InProcessRewards
    from vlac.cloud.learner.config import RewardsConfig
    from vlac.cloud.learner.episodes import start_fingerprint
    from vlac.cloud.learner.rewards import critic_scores
    from vlac.cloud.store.episodes import EpisodeStore

    torch.set_num_threads(1)
    store = EpisodeStore(store_root, read_only=True)
    source = InProcessRewards(SmallVLACCritic.load(critic_path))
    cfg = RewardsConfig(mode="critic")
    rows = []
    for info in store.list_episodes():
        if info.get("source") == "demo":
            continue
        ep = store.load_episode(info["robot_id"], info["episode_id"])
        frames = ep.steps.images[camera]
        delta, _ = critic_scores(source, cfg, ep.task, frames)
        rows.append({"task": info.get("task_id") or ep.task, "success":
                     bool(info["outcome"]["success"]), "return": float(np.sum(delta)),
                     "start": start_fingerprint(frames, ep.steps.proprio)})
    return rows


def report(rows: list[dict]) -> tuple[float, float]:
    by_task = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    every, same = [], []
    print(f"{'task':<20} {'episodes':>8} {'success':>8} {'return s/f':>12} {'AUC all':>8} "
          f"{'AUC same start':>15}")
    for task, rs in sorted(by_task.items()):
        score = np.array([r["return"] for r in rs])
        ok = np.array([r["success"] for r in rs])
        a_all = pair_auc(score, ok)
        a_same = pair_auc(score, ok, [r["start"] for r in rs])
        every.append(a_all)
        same.append(a_same)
        s_f = f"{score[ok].mean():.2f}/{score[~ok].mean():.2f}" if ok.any() and (~ok).any() \
            else "-"
        print(f"{task:<20} {len(rs):>8} {ok.mean():>8.0%} {s_f:>12} {a_all:>8.2f} "
              f"{a_same:>15.2f}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan tasks
        return float(np.nanmean(every)), float(np.nanmean(same))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", help="episode store folders (their rollouts)")
    ap.add_argument("--critic", default=".cache/critic-data/critic/critic.pt")
    ap.add_argument("--camera", default="corner")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows = [r for s in a.stores for r in episode_returns(s, a.critic, a.camera)]
    auc_all, auc_same = report(rows)
    print(f"auc_all={auc_all:.3f} auc_same_start={auc_same:.3f}")


if __name__ == "__main__":
    main()

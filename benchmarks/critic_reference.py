"""Does a critic read its one-shot reference? Forward pairs (o_i, o_j), i in the first half of
a successful episode and j in the second, under a sentence that names no task, once with a
reference demonstration of the episode's own task and once with another task's. A critic
that reads the reference predicts progress with its own task's and about none with the
other's (what `vlac critic train --generic` labels); one that ignores it predicts the same.

    python benchmarks/critic_reference.py .cache/critic-ml45/critic/critic.pt \
        .cache/critic-ml45-generic/critic/critic.pt

Prints, per critic and split (the first 15 ML45 training tasks, the 5 test tasks), the mean
predicted delta with each reference, the label's mean and the gap; ends with
``reference_gap_seen=<x> reference_gap_test=<y>`` for the last critic named.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

PAIRS = 300


def pair_rows(episodes, sampler, sentence: str, n: int, seed: int = 0):
    """(own-reference rows, other-reference rows, labels): the same pairs twice."""
    rng = random.Random(seed)
    own, other, labels = [], [], []
    for _ in range(n):
        ep = rng.choice(episodes)
        t = len(ep)
        i, j = rng.randrange(t // 2), rng.randrange(t // 2, t)
        labels.append((j - i) / (t - 1))
        own.append((ep, i, j, sentence, labels[-1], 0, 1, ep.task_id))
        other.append((ep, i, j, sentence, labels[-1], 0, 1, sampler._other_task(ep.task_id)))
    return own, other, labels


def mean_delta(model, sampler, rows) -> float:
    sampler.rng.seed(1)  # the same reference episodes drawn for every critic
    b = sampler._collate(rows)
    out = model.critique(b["text"], b["feat_a"], b["feat_b"], b["ref"], b["ref_pos"],
                         b["ref_mask"])
    return float(out.delta.mean())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("critics", nargs="+", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path(".cache/critic-ml45"))
    ap.add_argument("--pairs", type=int, default=PAIRS)
    ap.add_argument("--splits", default=None, help="SEEN/TEST comma-separated task ids "
                    "instead of ML45's (a small subset: the test)")
    args = ap.parse_args(argv)
    from vlac.cloud.critic.data import PairMix, PairSampler, load_episodes
    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.models.encoders import FeatureCache, TextEncoder
    from vlac.cloud.store.episodes import EpisodeStore
    from vlac.shared import tasks

    splits = {"seen": list(tasks.ML45_TRAIN)[:15], "test": list(tasks.ML45_TEST)}
    if args.splits:
        seen, test = args.splits.split("/")
        splits = {"seen": seen.split(","), "test": test.split(",")}
    store = EpisodeStore(args.workdir / "store")
    cache, text = FeatureCache(args.workdir / "features"), TextEncoder()
    result: dict = {}
    for split, task_ids in splits.items():
        episodes = [e for e in load_episodes(store, cache, task_ids) if e.success]
        sampler = PairSampler(episodes, text, PairMix(), seed=0)
        own, other, labels = pair_rows(episodes, sampler, tasks.GENERIC_SENTENCES[0],
                                       args.pairs)
        for path in args.critics:
            model = SmallVLACCritic.load(path).model.eval()
            with torch.no_grad():
                a, b = mean_delta(model, sampler, own), mean_delta(model, sampler, other)
            result.setdefault(str(path), {})[split] = {"own": a, "other": b, "gap": a - b,
                                                       "label": float(np.mean(labels))}
            print(f"{split:5s} {path}: own task's reference {a:+.3f}, another task's "
                  f"{b:+.3f}, gap {a - b:+.3f} (label {np.mean(labels):.3f} against 0)")
    last = result[str(args.critics[-1])]
    print(f"reference_gap_seen={last['seen']['gap']:.3f} "
          f"reference_gap_test={last['test']['gap']:.3f}")
    return result


if __name__ == "__main__":
    main()

"""A done threshold chosen on validation data, so that done can end episodes on a robot that
has no success flag.

The critic's done probability is scored on (first frame, frame t) pairs of successful
episodes (done for t in the labelled tail, ``data.done_from``) and on the last frame of failed
episodes (never done). ``choose_threshold`` picks, on the validation half, the lowest
threshold whose precision reaches ``min_precision`` (the most recall at that precision);
the test half then says what it is worth on episodes it was not chosen on. Pure numpy.
"""

from __future__ import annotations

import numpy as np

MIN_PRECISION = 0.9  # issue 20's bar: done may end an episode only when it is this often right
MIN_RECALL = 0.8


def precision_recall(probs: np.ndarray, truth: np.ndarray, threshold: float
                     ) -> tuple[float, float]:
    """Precision and recall of ``probs > threshold`` against ``truth``. Precision with no
    positive prediction is 1.0 (nothing was called done wrongly); recall with no true done
    is 1.0."""
    probs, truth = np.asarray(probs, np.float64), np.asarray(truth, bool)
    if probs.shape != truth.shape:
        raise ValueError(f"probs {probs.shape} and truth {truth.shape} differ in shape")
    pred = probs > threshold
    tp = int((pred & truth).sum())
    called, actual = int(pred.sum()), int(truth.sum())
    return (tp / called if called else 1.0), (tp / actual if actual else 1.0)


def choose_threshold(probs: np.ndarray, truth: np.ndarray,
                     min_precision: float = MIN_PRECISION) -> float | None:
    """The lowest threshold (of the scores themselves, so ``probs > threshold`` changes at
    each) whose precision on these scores is at least ``min_precision`` and that calls at
    least one frame done; None when no threshold reaches it."""
    probs, truth = np.asarray(probs, np.float64), np.asarray(truth, bool)
    if not truth.any():
        return None
    best = None
    for th in np.unique(probs)[::-1][1:]:  # descending; the top score calls nothing done
        p, _ = precision_recall(probs, truth, float(th))
        if p >= min_precision:
            best = float(th)
    return best


def split_episodes(items: list, seed: int = 0) -> tuple[list, list]:
    """Episodes halved at random (validation, test): the threshold is chosen on one half and
    judged on the other, whole episodes apart, so no frame of one episode is in both."""
    order = np.random.default_rng(seed).permutation(len(items))
    half = (len(items) + 1) // 2
    return [items[i] for i in order[:half]], [items[i] for i in order[half:]]


def calibrate(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              min_precision: float = MIN_PRECISION) -> dict:
    """Threshold from ``val`` (probs, truth); precision/recall at 0.5 and at it on both
    (None for a half with no frames, or at a threshold that was not found)."""
    th = choose_threshold(*val, min_precision)
    out = {"threshold": th, "min_precision": min_precision}
    for name, (probs, truth) in (("val", val), ("test", test)):
        scored = len(truth) > 0  # too few episodes to halve leave the test half empty
        out[f"{name}_at_0.5"] = precision_recall(probs, truth, 0.5) if scored else None
        out[f"{name}_at_threshold"] = precision_recall(probs, truth, th) \
            if scored and th is not None else None
        out[f"{name}_frames"] = len(truth)
    return out

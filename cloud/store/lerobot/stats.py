"""Feature statistics as LeRobot stores them: per episode in the episodes table, aggregated over
the dataset in meta/stats.json (min, max, mean, std, count and the q01..q99 quantiles)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlac.cloud.store.lerobot.format import IMAGE_PREFIX

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)


def _sample_indices(n: int) -> np.ndarray:
    """Frames used for image stats: all of a short episode, ~n**0.75 of a long one."""
    num = max(min(n, 100), min(int(n ** 0.75), 10_000))
    return np.unique(np.round(np.linspace(0, n - 1, num)).astype(int))


def vector_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over the first axis of a (T, D) array; every stat has shape (D,)."""
    x = values.astype(np.float64) if values.dtype == bool else values
    out = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": x.mean(axis=0, dtype=np.float64),
           "std": x.std(axis=0, dtype=np.float64), "count": np.array([len(x)])}
    qs = np.quantile(x.astype(np.float64), QUANTILES, axis=0)
    for key, q in zip(QUANTILE_KEYS, qs, strict=True):
        out[key] = q
    return out


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of (T, H, W, C) uint8 frames, scaled to [0, 1], shape (C, 1, 1)."""
    sample = frames[_sample_indices(len(frames))]
    h, w = sample.shape[1:3]
    if max(h, w) >= 300:  # large frames: subsample pixels, stats barely change
        step = max(1, int(max(h, w) / 150))
        sample = sample[:, ::step, ::step]
    pixels = sample.reshape(-1, sample.shape[-1])
    out: dict[str, np.ndarray] = {
        "min": pixels.min(axis=0).astype(np.float64), "max": pixels.max(axis=0).astype(np.float64),
        "mean": pixels.mean(axis=0, dtype=np.float64), "std": pixels.std(axis=0, dtype=np.float64),
    }
    cdf = np.stack([np.cumsum(np.bincount(pixels[:, c], minlength=256))
                    for c in range(pixels.shape[1])])
    for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
        # smallest value whose cumulative count reaches q of the pixels (exact on uint8)
        out[key] = np.array([np.searchsorted(row, q * row[-1]) for row in cdf], np.float64)
    out = {k: (v / 255.0).reshape(-1, 1, 1) for k, v in out.items()}
    out["count"] = np.array([len(sample)])
    return out


def episode_stats(cols: dict[str, Any], frames: dict[str, np.ndarray],
                  features: dict[str, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Stats of one episode per feature: images and videos from the raw ``frames`` (camera ->
    pixels, as LeRobot takes them before encoding), the rest from the data columns ``cols``."""
    stats = {}
    for key, ft in features.items():
        if ft["dtype"] in ("image", "video"):
            stats[key] = image_stats(frames[key[len(IMAGE_PREFIX):]])
        else:
            v = np.asarray(cols[key])
            stats[key] = vector_stats(v.reshape(len(v), -1))
    return stats


def aggregate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset stats from episode stats, as LeRobot aggregates them: count-weighted means,
    pooled variance, min of mins, max of maxes, count-weighted quantiles."""
    counts = np.array([p["count"][0] for p in parts], np.float64)
    total = counts.sum()
    means = np.stack([p["mean"] for p in parts])
    w = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (means * w).sum(axis=0) / total
    var = ((np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2) * w).sum(0) / total
    out = {"min": np.min(np.stack([p["min"] for p in parts]), axis=0),
           "max": np.max(np.stack([p["max"] for p in parts]), axis=0),
           "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)])}
    for key in QUANTILE_KEYS:
        out[key] = (np.stack([p[key] for p in parts]) * w).sum(axis=0) / total
    return out

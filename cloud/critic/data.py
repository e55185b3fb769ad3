"""Training pairs for the critic, sampled on the fly from cached features of stored episodes.

Progress normalisation: in a successful episode of T recorded steps, the observation at step t
has progress t / (T - 1) (the linear-in-time assumption of the paper, on expert or
near-expert demonstrations). A pair (o_i, o_j) is labelled with the difference
(j - i) / (T - 1) in [-1, 1]: positive forward in time, negative for reversed pairs, 0 for the
same frame. Done is 1 when o_j is within the last 5% of a successful episode (at least 2
steps; ``done_from``).

Negatives the paper insists on, each a share of every batch:
- static: the same frame twice -> delta 0, not done (unless at the end);
- reversed: o_j before o_i -> the negative delta (half of all ordinary pairs);
- mismatched task sentence (a sentence of another task) -> delta 0, not done;
- failed episodes: done 0 everywhere, including their last frame. Their progress is unknown
  (a failed attempt may have made some), so their progress loss is masked out;
- generic sentences (``PairMix.generic``): a sentence that names no task, with a reference
  always given, so the reference is the only statement of the task: half of them get the
  episode's own task's reference (the ordinary label), half another task's (delta 0, not
  done). The critic must read the reference to tell them apart.
Sentences are drawn from all paraphrases of the task each time, so language is not an id.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from vlac.cloud.models.encoders import FeatureCache, TextEncoder
from vlac.cloud.store.episodes import EpisodeStore
from vlac.shared import tasks as task_text

REF_FRAMES = 4


@dataclass
class EpisodeFeatures:
    robot_id: str
    episode_id: str
    task_id: str
    sentence: str
    success: bool
    feats: np.ndarray
    """(T, 16, 1280) float16."""

    def __len__(self) -> int:
        return len(self.feats)

    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """REF_FRAMES pooled frames spread over the episode, and where they were (0..1)."""
        idx = np.linspace(0, len(self) - 1, REF_FRAMES).round().astype(int)
        pos = idx / max(1, len(self) - 1)
        return self.feats[idx].astype(np.float32).mean(1), pos.astype(np.float32)


def load_episodes(store: EpisodeStore, cache: FeatureCache, task_ids: list[str],
                  camera: str = "corner", progress=None) -> list[EpisodeFeatures]:
    """Features of every complete episode whose task_id is in ``task_ids``."""
    infos = [e for e in store.list_episodes() if e.get("task_id") in set(task_ids)]
    out = []
    for info in infos if progress is None else progress(infos):
        r, e = info["robot_id"], info["episode_id"]

        def frames(r=r, e=e):
            return store.load_episode(r, e).steps.images[camera]

        out.append(EpisodeFeatures(r, e, info["task_id"], info["task"],
                                   bool(info["outcome"]["success"]),
                                   cache.get(r, e, camera, frames)))
    return out


def split_holdout(episodes: list[EpisodeFeatures], holdout: int
                  ) -> tuple[list[EpisodeFeatures], list[EpisodeFeatures]]:
    """The last ``holdout`` successful episodes of each task (by id) are held out."""
    by_task = defaultdict(list)
    for ep in sorted(episodes, key=lambda e: e.episode_id):
        if ep.success:
            by_task[ep.task_id].append(ep)
    held = {id(ep) for eps in by_task.values() for ep in eps[-holdout:]} if holdout else set()
    return ([e for e in episodes if id(e) not in held], [e for e in episodes if id(e) in held])


@dataclass
class PairMix:
    static: float = 0.1
    mismatched: float = 0.25
    failed: float = 0.15
    near: float = 0.3
    """Share of ordinary pairs at most 3 steps apart (the reward uses short strides)."""
    end: float = 0.1
    """Share of ordinary pairs whose later frame is the last one (done examples)."""
    with_reference: float = 0.5
    generic: float = 0.0
    """Share of ordinary pairs with a generic sentence and the reference as the task."""
    done_tail: float = 0.05
    """Done is labelled on the last max(2, ceil(done_tail * T)) steps of a successful
    episode: the frames just before Meta-World's success check look the same as after."""


def done_from(t: int, tail: float = 0.05) -> int:
    """First step index labelled done in a successful episode of t steps."""
    return t - max(2, math.ceil(tail * t))


class PairSampler:
    def __init__(self, episodes: list[EpisodeFeatures], text: TextEncoder | None,
                 mix: PairMix | None = None, seed: int = 0) -> None:
        """``text`` None: rows only (``sample_rows``), for a critic that reads the sentence
        itself."""
        self.mix = mix or PairMix()
        self.rng = random.Random(seed)
        self.success = [e for e in episodes if e.success and len(e) >= 2]
        self.failed = [e for e in episodes if not e.success and len(e) >= 2]
        if not self.success:
            raise ValueError("no successful episodes to learn progress from; collect "
                             "demonstrations with `vlac demos collect` first")
        self.by_task: dict[str, list[EpisodeFeatures]] = defaultdict(list)
        for e in self.success:
            self.by_task[e.task_id].append(e)
        self.task_ids = sorted(self.by_task)
        self.sentences = {t: task_text.instructions(t) for t in self.task_ids}
        all_sentences = sorted({s for v in self.sentences.values() for s in v}
                               | {e.sentence for e in episodes}
                               | set(task_text.GENERIC_SENTENCES))
        self.text_emb = {} if text is None else dict(
            zip(all_sentences, text.encode(all_sentences), strict=True))

    def _sentence(self, task_id: str) -> str:
        return self.rng.choice(self.sentences[task_id])

    def _other_task(self, task_id: str) -> str:
        others = [t for t in self.task_ids if t != task_id]
        return self.rng.choice(others) if others else task_id

    def _reference(self, ep: EpisodeFeatures, task_id: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray] | None:
        """Another successful episode's reference frames, of ``task_id`` (default: the
        episode's own task)."""
        pool = [e for e in self.by_task.get(task_id or ep.task_id, []) if e is not ep]
        return self.rng.choice(pool).reference() if pool else None

    def sample(self, n: int) -> dict[str, torch.Tensor]:
        return self._collate(self.sample_rows(n))

    def sample_rows(self, n: int) -> list[tuple]:
        """``n`` pairs as (episode, i, j, sentence, delta, done, progress known, reference
        task): the reference task is None (a reference of the episode's task, given with
        ``with_reference``'s probability) or a task id whose reference is always given."""
        m = self.mix
        rows = []
        for _ in range(n):
            u = self.rng.random()
            if u < m.failed and self.failed:
                ep = self.rng.choice(self.failed)
                i = self.rng.randrange(len(ep))
                j = len(ep) - 1 if self.rng.random() < 0.5 else self.rng.randrange(len(ep))
                rows.append((ep, i, j, self._sentence(ep.task_id), 0.0, 0, 0, None))
                continue
            ep = self.rng.choice(self.success)
            t = len(ep)
            if u < m.failed + m.mismatched:
                i, j = self.rng.randrange(t), self.rng.randrange(t)
                rows.append((ep, i, j, self._sentence(self._other_task(ep.task_id)), 0.0, 0, 1,
                             None))
                continue
            if u < m.failed + m.mismatched + m.static:
                i = j = self.rng.randrange(t)
            else:
                v = self.rng.random()
                if v < m.end:
                    i, j = self.rng.randrange(t), t - 1
                elif v < m.end + m.near:
                    i = self.rng.randrange(t)
                    j = min(t - 1, max(0, i + self.rng.randint(-3, 3)))
                else:
                    i, j = self.rng.randrange(t), self.rng.randrange(t)
            delta = (j - i) / (t - 1)
            done = int(j >= done_from(t, m.done_tail))
            if self.rng.random() < m.generic and len(self.by_task[ep.task_id]) > 1:
                rows.append(self._generic_row(ep, i, j, delta, done))
            else:
                rows.append((ep, i, j, self._sentence(ep.task_id), delta, done, 1, None))
        return rows

    def _generic_row(self, ep: EpisodeFeatures, i: int, j: int, delta: float,
                     done: int) -> tuple:
        sentence = self.rng.choice(task_text.GENERIC_SENTENCES)
        other = self._other_task(ep.task_id)
        if other != ep.task_id and self.rng.random() < 0.5:  # another task's demonstration
            return (ep, i, j, sentence, 0.0, 0, 1, other)
        return (ep, i, j, sentence, delta, done, 1, ep.task_id)

    def _collate(self, rows) -> dict[str, torch.Tensor]:
        refs, ref_pos, ref_mask = [], [], []
        for ep, *_, ref_task in rows:
            if ref_task is not None:
                ref = self._reference(ep, ref_task)
            else:
                ref = self._reference(ep) if self.rng.random() < self.mix.with_reference \
                    else None
            if ref is None:
                refs.append(np.zeros((REF_FRAMES, 1280), np.float32))
                ref_pos.append(np.zeros(REF_FRAMES, np.float32))
                ref_mask.append(np.zeros(REF_FRAMES, bool))
            else:
                refs.append(ref[0])
                ref_pos.append(ref[1])
                ref_mask.append(np.ones(REF_FRAMES, bool))
        return {
            "text": torch.from_numpy(np.stack([self.text_emb[r[3]] for r in rows])),
            "feat_a": torch.from_numpy(np.stack([r[0].feats[r[1]] for r in rows])),
            "feat_b": torch.from_numpy(np.stack([r[0].feats[r[2]] for r in rows])),
            "delta": torch.tensor([r[4] for r in rows], dtype=torch.float32),
            "done": torch.tensor([r[5] for r in rows]),
            "progress_mask": torch.tensor([r[6] for r in rows], dtype=torch.float32),
            "ref": torch.from_numpy(np.stack(refs)),
            "ref_pos": torch.from_numpy(np.stack(ref_pos)),
            "ref_mask": torch.from_numpy(np.stack(ref_mask)),
        }

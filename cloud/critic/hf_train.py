"""`vlac critic train --backend transformers`: fine-tune a transformers critic checkpoint (the
``hf_critic`` adapter; InternVL 8B in production) on the same pairs and losses as the small
critic.

The pairs come from ``critic.data.PairSampler`` (progress labels, reversed, static,
mismatched-sentence and failed-episode negatives, done on the last frames of successes),
drawn from the stored episodes' frames; the loss is ``critic_loss_of_logits`` on the
checkpoint's teacher-forced progress and done logits (``TransformersCritic.pair_logits``).
It runs on the shared DeepSpeed engine wrapper (ZeRO 0-3), checkpoints every
``checkpoint_every`` steps and resumes from ``out/checkpoints``, and writes the fine-tuned
checkpoint folder ``out/critic/`` that ``vlac critic serve --backend transformers|vllm
--critic out/critic`` and ``TransformersCritic`` load.

- ``--lora-rank R``: LoRA adapters (peft) on ``--lora-targets`` and the critic tokens' rows
  (``cloud.models.lora``), the rest frozen; the saved folder has them merged (a plain
  checkpoint, which vLLM needs).
- Not here yet: reference frames in training prompts (``PairMix.with_reference`` is 0 for
  this backend: the transformers critic takes one reference per call, the sampler one per
  pair), and frames are kept in memory (the camera's frames of every loaded episode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vlac.cloud.critic.data import PairMix, PairSampler, split_holdout
from vlac.cloud.critic.model import write_json
from vlac.cloud.models import engine as eng
from vlac.cloud.models.lora import merged, with_lora
from vlac.cloud.models.vlac import critic_loss_of_logits, delta_to_token


@dataclass
class EpisodeFrames:
    """What ``PairSampler`` needs of an episode, with its camera frames."""

    robot_id: str
    episode_id: str
    task_id: str
    sentence: str
    success: bool
    frames: np.ndarray  # (T, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.frames)


def load_frame_episodes(store, task_ids: list[str], camera: str, progress=None
                        ) -> list[EpisodeFrames]:
    infos = [e for e in store.list_episodes() if e.get("task_id") in set(task_ids)]
    out = []
    for info in infos if progress is None else progress(infos):
        ep = store.load_episode(info["robot_id"], info["episode_id"])
        if camera not in ep.steps.images:
            raise ValueError(f"episode {info['robot_id']}/{info['episode_id']} has no camera "
                             f"{camera!r} (it has {sorted(ep.steps.images)}); set --camera")
        out.append(EpisodeFrames(info["robot_id"], info["episode_id"], info["task_id"],
                                 info["task"], bool(info["outcome"]["success"]),
                                 ep.steps.images[camera]))
    return out


def batch_of(rows: list[tuple]) -> tuple[list[str], np.ndarray, np.ndarray, dict]:
    """Sentences, first frames, second frames and the loss's targets of sampled rows."""
    targets = {"delta": torch.tensor([r[4] for r in rows], dtype=torch.float32),
               "done": torch.tensor([r[5] for r in rows]),
               "progress_mask": torch.tensor([r[6] for r in rows], dtype=torch.float32)}
    return ([r[3] for r in rows], np.stack([r[0].frames[r[1]] for r in rows]),
            np.stack([r[0].frames[r[2]] for r in rows]), targets)


def train_transformers(cfg, store) -> dict:
    """The training run of ``critic.train.main`` for ``--backend transformers``."""
    from vlac.cloud.critic.train import resume, train_steps
    from vlac.cloud.models.hf_critic import TransformersCritic

    device = "cuda" if torch.cuda.is_available() else "cpu"
    critic = TransformersCritic(cfg.init, device=device, dtype=getattr(torch, cfg.dtype),
                                images_kwargs=None if cfg.image_tiles
                                else {"crop_to_patches": False})
    peft = with_lora(critic.model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets,
                     critic._opened.ids) if cfg.lora_rank else None
    episodes = load_frame_episodes(store, cfg.tasks, cfg.camera,
                                   progress=lambda x: tqdm(x, desc="episodes", unit="ep"))
    missing = sorted(set(cfg.tasks) - {e.task_id for e in episodes})
    if missing:
        raise ValueError(f"no episodes for tasks {missing} in {cfg.store_root}; collect them "
                         f"with `vlac demos collect --tasks {','.join(missing)}`")
    train_eps, held = split_holdout(episodes, cfg.holdout)
    sampler = PairSampler(train_eps, None, PairMix(with_reference=0.0), seed=cfg.seed)
    engine = eng.make_engine(critic.model, lr=cfg.lr, zero_stage=cfg.zero_stage,
                             micro_batch=cfg.batch_size)
    start, log = resume(engine, cfg, sampler)
    trainable = sum(p.numel() for p in critic.model.parameters() if p.requires_grad)
    print(f"{len(train_eps)} training episodes ({sum(map(len, train_eps))} frames), "
          f"{len(held)} held out; {trainable / 1e6:.2f} M trainable params"
          f"{' (LoRA)' if peft else ''}; "
          f"{'resuming at step ' + str(start) if start else 'starting fresh'}", flush=True)
    t0 = time.monotonic()

    def batch_loss():
        tasks, a, b, targets = batch_of(sampler.sample_rows(cfg.batch_size))
        p_logits, d_logits = critic.pair_logits(tasks, a, b, delta_to_token(targets["delta"]))
        return critic_loss_of_logits(p_logits, d_logits, targets, critic.bin_values.float())

    stats = train_steps(engine, cfg, start, log, batch_loss, log_every=10,
                        warmup=min(100, cfg.steps // 10))
    model = merged(peft) if peft is not None else critic.model
    out = cfg.out / "critic"
    model.save_pretrained(out)
    critic.processor.save_pretrained(out)
    summary = {"backend": "transformers", "steps": cfg.steps,
               "seconds": time.monotonic() - t0, "final": stats,
               "train_episodes": len(train_eps), "held_out": [e.episode_id for e in held],
               "tasks": cfg.tasks, "log": log}
    write_json(cfg.out / "train_log.json", summary)
    print(f"critic checkpoint saved to {out}", flush=True)
    return summary


__all__ = ["EpisodeFrames", "batch_of", "load_frame_episodes", "train_transformers"]

"""`vlac critic train`: the small VLAC critic on pairs from stored demonstrations (or, with
``--backend transformers``, a transformers checkpoint fine-tuned on the same pairs and losses:
``critic.hf_train``).

Runs on the DeepSpeed engine wrapper the learner shares (``vlac.cloud.models.engine``), checkpoints
every ``checkpoint_every`` steps and resumes from the latest checkpoint in ``out``, shows
progress, and writes ``out/critic.pt`` (what ``vlac critic eval`` and the reward service
load), ``out/train_log.json`` and ``out/train_loss.png``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from vlac.cloud.critic.data import PairMix, PairSampler, load_episodes, split_holdout
from vlac.cloud.critic.model import SmallVLACCritic, write_json
from vlac.cloud.models import engine as eng
from vlac.cloud.models.encoders import FeatureCache, TextEncoder
from vlac.cloud.models.lora import LORA_TARGETS
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig, cosine_lr, critic_loss, param_count
from vlac.cloud.store.location import open_episode_store, store_location
from vlac.shared.config import check, describe, opt

TRAIN_TASKS = ["reach-v3", "push-v3", "pick-place-v3", "drawer-open-v3", "drawer-close-v3",
               "button-press-v3", "door-open-v3", "window-open-v3", "faucet-open-v3",
               "plate-slide-v3"]
UNSEEN_TASKS = ["button-press-topdown-v3", "window-close-v3", "coffee-button-v3",
                "handle-press-v3"]


@dataclass
class CriticTrainConfig:
    backend: Literal["small", "transformers"] = opt(
        "small", "small: train the small VLAC critic from scratch (writes critic.pt); "
        "transformers: fine-tune the checkpoint folder --init (prepared by "
        "hf_critic.prepare_checkpoint; writes the folder OUT/critic).")
    init: Path | None = opt(None, "transformers: the checkpoint folder to fine-tune.")
    lora_rank: int = opt(0, "transformers: LoRA adapters of this rank (peft), the rest "
                         "frozen (0: every weight trains).")
    lora_alpha: float = opt(16.0, "transformers: LoRA's scale numerator.")
    lora_targets: list[str] = opt(list(LORA_TARGETS),
                                  "transformers: the module names LoRA adapts.")
    dtype: Literal["float32", "bfloat16"] = opt("float32", "transformers: the weights' type.")
    image_tiles: bool = opt(False, "transformers: let InternVL's processor tile frames.")
    store_root: Path | str = opt(Path(".cache/store"), "Episode store with demonstrations "
                                 "(a folder or s3://BUCKET/PREFIX?endpoint=URL).")
    out: Path = opt(Path(".cache/critic"), "Output folder: checkpoints, critic.pt, logs.")
    features: Path = opt(Path(".cache/critic/features"), "Image feature cache (shared with "
                         "`vlac critic eval`).")
    tasks: list[str] = opt(TRAIN_TASKS, "Tasks (task ids) to train on.")
    holdout: int = opt(2, "Successful episodes per task held out for evaluation.")
    steps: int = opt(3000, "Optimizer steps.")
    batch_size: int = opt(64, "Pairs per step.")
    lr: float = opt(1e-3, "Peak learning rate (cosine schedule, warm-up 100 steps).")
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage (0-3).")
    d_model: int = opt(128, "Width of the fusion transformer.")
    layers: int = opt(3, "Layers of the fusion transformer.")
    image_grid: int = opt(VLACConfig.image_grid, "Image tokens per side (the cached 4x4 grid "
                          "pooled to this), plus one global token.")
    feature_dropout: float = opt(VLACConfig.feature_dropout, "Dropout on the frozen image "
                                 "features in training (an augmentation).")
    checkpoint_every: int = opt(500, "Steps between checkpoints (resume points).")
    camera: str = opt("corner", "Camera whose frames the critic sees.")
    seed: int = opt(0, "Seed of initialisation and pair sampling.")
    generic: float = opt(0.0, "small: share of pairs whose sentence names no task and whose "
                         "reference demonstration (always given) is the task: half of them "
                         "another task's, labelled no progress (one-shot in-context "
                         "training).")
    threads: int = opt(0, "torch threads (0: torch's default).")

    def __post_init__(self) -> None:
        self.store_root, self.out = store_location(self.store_root), Path(self.out)
        self.features = Path(self.features)
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.batch_size >= 2, "batch_size", "must be >= 2")
        check(0 <= self.zero_stage <= 3, "zero_stage", "use 0, 1, 2 or 3")
        check(self.image_grid in (1, 2, 4), "image_grid", "use 1, 2 or 4 (the cached grid "
              "is 4x4)")
        check(0 <= self.feature_dropout < 1, "feature_dropout", "must lie in [0, 1)")
        check(self.holdout >= 0, "holdout", "must be >= 0")
        check(len(self.tasks) >= 1, "tasks", "name at least one task id")
        check(self.backend in ("small", "transformers"), "backend", "use small or transformers")
        if self.init is not None:
            self.init = Path(self.init)
        check(self.backend == "small" or (self.init is not None and self.init.is_dir()),
              "init", f"--backend transformers fine-tunes a checkpoint folder: {self.init} "
              "is not one (make it with hf_critic.prepare_checkpoint)")
        check(self.lora_rank >= 0, "lora_rank", "must be >= 0 (0: no LoRA)")
        check(0 <= self.generic <= 1, "generic", "must lie in [0, 1]")
        check(self.generic == 0 or self.backend == "small", "generic", "the transformers "
              "critic is trained without reference frames yet; use --generic 0")
        check(self.lora_rank == 0 or self.backend == "transformers", "lora_rank",
              "LoRA adapts a transformers critic only (--backend transformers)")


def main(cfg: CriticTrainConfig) -> dict:
    print(describe(cfg), flush=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    store = open_episode_store(cfg.store_root, read_only=True)
    if cfg.backend == "transformers":
        from vlac.cloud.critic.hf_train import train_transformers

        return train_transformers(cfg, store)
    cache = FeatureCache(cfg.features)
    episodes = load_episodes(store, cache, cfg.tasks, cfg.camera,
                             progress=lambda x: tqdm(x, desc="image features", unit="ep"))
    found = {e.task_id for e in episodes}
    missing = sorted(set(cfg.tasks) - found)
    if missing:
        raise ValueError(f"no episodes for tasks {missing} in {cfg.store_root}; collect them "
                         f"with `vlac demos collect --tasks {','.join(missing)}`")
    train_eps, held = split_holdout(episodes, cfg.holdout)
    sampler = PairSampler(train_eps, TextEncoder(), PairMix(generic=cfg.generic), seed=cfg.seed)
    model = SmallVLAC(VLACConfig(d_model=cfg.d_model, layers=cfg.layers,
                                 image_grid=cfg.image_grid,
                                 feature_dropout=cfg.feature_dropout))
    engine = eng.make_engine(model, lr=cfg.lr, zero_stage=cfg.zero_stage,
                             micro_batch=cfg.batch_size)
    start, log = resume(engine, cfg, sampler)
    print(f"{len(train_eps)} training episodes ({sum(map(len, train_eps))} frames), "
          f"{len(held)} held out; model {param_count(model) / 1e6:.2f} M trainable params; "
          f"{'resuming at step ' + str(start) if start else 'starting fresh'}", flush=True)
    t0 = time.monotonic()

    def batch_loss():
        return critic_loss(engine, sampler.sample(cfg.batch_size),
                           bin_values=engine.module.bin_values)

    stats = train_steps(engine, cfg, start, log, batch_loss, log_every=50)
    critic = SmallVLACCritic(engine.module.eval())
    critic.save(cfg.out / "critic.pt")
    summary = {"steps": cfg.steps, "seconds": time.monotonic() - t0, "final": stats,
               "train_episodes": len(train_eps), "held_out": [e.episode_id for e in held],
               "tasks": cfg.tasks, "log": log}
    write_json(cfg.out / "train_log.json", summary)
    _plot(log, cfg.out / "train_loss.png")
    print(f"critic saved to {cfg.out / 'critic.pt'}", flush=True)
    return summary


def resume(engine, cfg: CriticTrainConfig, sampler: PairSampler) -> tuple[int, list[dict]]:
    """The step and log of the latest checkpoint in ``out/checkpoints`` (loaded into
    ``engine``; 0 and [] for a fresh run); the sampler is reseeded so that a resumed run does
    not replay batches."""
    client = eng.load(engine, cfg.out / "checkpoints")
    start = int(client["step"]) if client else 0
    sampler.rng.seed(cfg.seed * 1_000_003 + start)
    return start, client.get("log", []) if client else []


def train_steps(engine, cfg: CriticTrainConfig, start: int, log: list[dict],
                batch_loss: Callable[[], tuple[torch.Tensor, dict[str, float]]], *,
                log_every: int, warmup: int = 100) -> dict[str, float]:
    """Steps ``start`` .. ``cfg.steps`` of ``batch_loss()`` at the cosine learning rate, with
    a progress bar, a log row every ``log_every`` steps and a checkpoint every
    ``checkpoint_every``. Returns the last step's metrics."""
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="critic",
               mininterval=5)
    stats: dict[str, float] = {}
    engine.train()
    for step in bar:
        eng.set_lr(engine, cosine_lr(step, cfg.steps, cfg.lr, warmup=warmup))
        loss, stats = batch_loss()
        engine.backward(loss)
        engine.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            log.append({"step": step, **stats})
            bar.set_postfix(loss=f"{stats['loss']:.3f}", mae=f"{stats['delta_mae']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1:
            eng.save(engine, cfg.out / "checkpoints", step + 1, {"log": log})
    return stats


def _plot(log: list[dict], path: Path) -> None:
    if not log:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [r["step"] for r in log]
    ax[0].plot(steps, [r["progress_loss"] for r in log], label="progress")
    ax[0].plot(steps, [r["done_loss"] for r in log], label="done")
    ax[0].set_xlabel("step")
    ax[0].set_title("loss")
    ax[0].legend()
    ax[1].plot(steps, [r["delta_mae"] for r in log])
    ax[1].set_xlabel("step")
    ax[1].set_title("|delta error| on training pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Behaviour cloning of the actor on stored demonstrations (imitation pretraining).

Each sample is one demonstration step: the frame's cached image features, the proprio, a
paraphrase of the task sentence and the recorded action tokens; the loss is cross-entropy on
each dimension's token with soft targets over neighbouring bins. ``demos_per_task`` is the
knob that sets how good the starting policy is (the learning benchmark wants ~30%).
Runs on the shared DeepSpeed engine wrapper.

``encoder="int8"`` (the default) first quantizes the image encoder to static INT8, calibrated on
frames of the demonstrations used, and trains on that encoder's features: the actor is then the
same function on the robot's INT8 graph as in the learner (``vlac.cloud.models.encoders``).
The graph is kept as ``OUT/image_encoder_int8.onnx`` (a run resuming from OUT's checkpoint
reuses it) and inside ``actor.pt``.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from vlac.cloud.actor.model import TorchActor
from vlac.cloud.critic.model import write_json
from vlac.cloud.models import engine as eng
from vlac.cloud.models.encoders import FeatureCache, ImageEncoder, Int8ImageEncoder, TextEncoder
from vlac.cloud.models.vlac import SmallVLAC, VLACConfig, bc_loss, cosine_lr, param_count
from vlac.cloud.store.episodes import EpisodeStore
from vlac.cloud.store.location import open_episode_store, store_location
from vlac.shared import tasks as task_text
from vlac.shared.config import check, describe, opt


@dataclass
class ActorPretrainConfig:
    store_root: Path | str = opt(Path(".cache/store"), "Episode store with demonstrations "
                                 "(a folder or s3://BUCKET/PREFIX?endpoint=URL).")
    out: Path = opt(Path(".cache/actor"), "Output folder: actor.pt, checkpoints, logs.")
    features: Path = opt(Path(".cache/critic/features"), "Image feature cache (shared).")
    tasks: list[str] = opt(list(task_text.HEADLINE_TASKS), "Tasks (task ids) to imitate.")
    demos_per_task: int = opt(10, "Successful demonstrations used per task (the knob).")
    steps: int = opt(2000, "Optimizer steps.")
    batch_size: int = opt(128, "Steps per batch.")
    lr: float = opt(1e-3, "Peak learning rate (cosine).")
    init_from_critic: Path | None = opt(None, "Start from these critic weights (critic.pt).")
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage.")
    camera: str = opt("corner", "Camera the actor sees.")
    seed: int = opt(0, "Seed.")
    checkpoint_every: int = opt(1000, "Steps between checkpoints.")
    eval_episodes: int = opt(0, "Evaluate in simulation afterwards: episodes per task.")
    feature_noise: float = opt(0.0, "Relative Gaussian noise on image features while "
                               "training (robustness, e.g. to INT8 feature error).")
    encoder: Literal["int8", "fp32"] = opt(
        "int8", "Image encoder the actor learns on: int8 (the graph the robots run, "
        "calibrated on the demonstrations; exports reach exact parity) or fp32.")
    calibration_frames: int = opt(128, "Demonstration frames that calibrate the INT8 encoder.")
    fp32_convs: int = opt(2, "Leading EfficientNet convolutions kept fp32 in the INT8 encoder "
                          "(the early ones see the largest maps and lose the most).")

    def __post_init__(self) -> None:
        self.store_root, self.out, self.features = (store_location(self.store_root), Path(self.out),
                                                    Path(self.features))
        if self.init_from_critic is not None:
            self.init_from_critic = Path(self.init_from_critic)
            check(self.init_from_critic.exists(), "init_from_critic",
                  f"{self.init_from_critic} does not exist")
        check(self.demos_per_task >= 1, "demos_per_task", "must be >= 1")
        check(self.steps >= 1, "steps", "must be >= 1")
        check(self.encoder in ("int8", "fp32"), "encoder", "use int8 or fp32")
        check(self.calibration_frames >= 8, "calibration_frames", "use at least 8")
        check(self.fp32_convs >= 0, "fp32_convs", "must be >= 0")


@dataclass
class DemoSteps:
    feats: np.ndarray
    proprio: np.ndarray
    tokens: np.ndarray
    task_ids: np.ndarray
    sentences: dict[str, list[str]] = field(default_factory=dict)


def image_encoder(cfg: ActorPretrainConfig, store: EpisodeStore, episodes: list[dict]
                  ) -> ImageEncoder:
    """The fp32 encoder, or the INT8 one calibrated on frames spread over ``episodes`` (kept
    in ``cfg.out``: a run that resumes from a checkpoint there learns on the same one; a fresh
    run calibrates again)."""
    if cfg.encoder == "fp32":
        return ImageEncoder()
    path = cfg.out / "image_encoder_int8.onnx"
    if path.exists() and (cfg.out / "checkpoints" / "latest").exists():
        return Int8ImageEncoder(path.read_bytes())
    rng = np.random.default_rng(cfg.seed)
    per = -(-cfg.calibration_frames // len(episodes))
    frames = []
    for e in episodes:
        imgs = store.load_episode(e["robot_id"], e["episode_id"]).steps.images[cfg.camera]
        frames.append(imgs[np.sort(rng.choice(len(imgs), min(per, len(imgs)), replace=False))])
    encoder = Int8ImageEncoder.calibrate(np.concatenate(frames)[: cfg.calibration_frames],
                                         cfg.fp32_convs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(encoder.onnx)
    tmp.replace(path)
    return encoder


def load_demos(cfg: ActorPretrainConfig) -> tuple[DemoSteps, dict, ImageEncoder]:
    store = open_episode_store(cfg.store_root, read_only=True)
    by_task = defaultdict(list)
    for e in sorted(store.list_episodes(), key=lambda e: e["episode_id"]):
        if e.get("task_id") in cfg.tasks and e["outcome"]["success"] and \
                e.get("source") == "demo":
            by_task[e["task_id"]].append(e)
    missing = [t for t in cfg.tasks if len(by_task[t]) < cfg.demos_per_task]
    if missing:
        raise ValueError(f"fewer than {cfg.demos_per_task} successful demonstrations for "
                         f"{missing} in {cfg.store_root}; collect more with `vlac demos "
                         f"collect --tasks {','.join(missing)}`")
    chosen = [e for t in cfg.tasks for e in by_task[t][: cfg.demos_per_task]]
    encoder = image_encoder(cfg, store, chosen)
    cache = FeatureCache(cfg.features, encoder)
    feats, proprio, tokens, tids = [], [], [], []
    used = {}
    for t in cfg.tasks:
        eps = by_task[t][: cfg.demos_per_task]
        used[t] = [e["episode_id"] for e in eps]
        for e in eps:
            r, ep = e["robot_id"], e["episode_id"]
            cols = store.load_columns(r, ep, ["proprio", "action_tokens"])

            def frames(r=r, ep=ep):
                return store.load_episode(r, ep).steps.images[cfg.camera]

            feats.append(cache.get(r, ep, cfg.camera, frames))
            proprio.append(cols["proprio"].astype(np.float32))
            tokens.append(cols["action_tokens"].astype(np.int64))
            tids += [t] * len(cols["proprio"])
    data = DemoSteps(np.concatenate(feats), np.concatenate(proprio), np.concatenate(tokens),
                     np.array(tids), {t: task_text.instructions(t) for t in cfg.tasks})
    return data, used, encoder


def _noisy(feats: np.ndarray, rel: float, gen: np.random.Generator) -> torch.Tensor:
    """Features times (1 + rel * N(0, 1)) elementwise: quantization-like error."""
    if rel > 0:
        feats = feats * (1.0 + rel * gen.standard_normal(feats.shape, dtype=np.float32))
    return torch.from_numpy(feats)


def train(cfg: ActorPretrainConfig) -> tuple[TorchActor, dict]:
    print(describe(cfg), flush=True)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    data, used, encoder = load_demos(cfg)
    text = TextEncoder()
    all_sentences = sorted({s for v in data.sentences.values() for s in v})
    emb = dict(zip(all_sentences, text.encode(all_sentences), strict=True))
    if cfg.init_from_critic is not None:
        model = TorchActor.model_from_critic(cfg.init_from_critic)
    else:
        model = SmallVLAC(VLACConfig())
    engine = eng.make_engine(model, lr=cfg.lr, zero_stage=cfg.zero_stage,
                             micro_batch=cfg.batch_size)
    ckpt = cfg.out / "checkpoints"
    client = eng.load(engine, ckpt)
    start = int(client["step"]) if client else 0
    log = client.get("log", []) if client else []
    n = len(data.proprio)
    print(f"{n} demonstration steps from {sum(map(len, used.values()))} episodes; model "
          f"{param_count(model) / 1e6:.2f} M params"
          f"{' (from critic)' if cfg.init_from_critic else ''}; "
          f"{'resuming at ' + str(start) if start else 'starting fresh'}", flush=True)
    t0 = time.monotonic()
    stats: dict = {}
    engine.train()
    gen = np.random.default_rng(cfg.seed * 7919 + start)
    for step in tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="actor",
                     mininterval=5):
        eng.set_lr(engine, cosine_lr(step, cfg.steps, cfg.lr))
        idx = gen.integers(0, n, cfg.batch_size)
        batch = {
            "text": torch.from_numpy(np.stack([emb[rng.choice(data.sentences[t])]
                                               for t in data.task_ids[idx]])),
            "feat": _noisy(data.feats[idx].astype(np.float32), cfg.feature_noise, gen),
            "proprio": torch.from_numpy(data.proprio[idx]),
            "tokens": torch.from_numpy(data.tokens[idx]),
        }
        loss, stats = bc_loss(engine, batch)
        engine.backward(loss)
        engine.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.append({"step": step, **stats})
        if (step + 1) % cfg.checkpoint_every == 0 or step == cfg.steps - 1:
            eng.save(engine, ckpt, step + 1, {"log": log})
    actor = TorchActor(engine.module.eval(), camera=cfg.camera, image_encoder=encoder)
    actor.save(cfg.out / "actor.pt")
    summary = {"steps": cfg.steps, "seconds": time.monotonic() - t0, "final": stats,
               "demos": used, "log": log, "encoder": encoder.precision,
               "init_from_critic": str(cfg.init_from_critic) if cfg.init_from_critic else None}
    write_json(cfg.out / "pretrain_log.json", summary)
    print(f"actor saved to {cfg.out / 'actor.pt'}: {stats}", flush=True)
    return actor, summary

"""The DeepSpeed engine wrapper shared by critic training and the PPO learner.

On this CPU-only machine DeepSpeed picks its CPU accelerator and the gloo backend by itself;
on GPU hosts the same code runs on CUDA/NCCL. A plain ``python`` process (no launcher) gets
the single-process rendezvous variables set here, so tests and ``vlac critic train`` run
without ``deepspeed``/``torchrun``; multi-process runs come from the launcher
(``torchrun --nproc_per_node 2 ...``). The ZeRO stage and batch sizes come from a JSON config
in ``infra/deepspeed/`` (overridable). The optimizer is torch's AdamW (DeepSpeed's fused Adam
would compile a C++ extension for over a minute on first use).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from vlac.shared.net import free_port

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "infra" / "deepspeed"


def ensure_single_process_env() -> None:
    """Rendezvous variables for one process when no launcher set them."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("MASTER_PORT", str(free_port()))})


def load_ds_config(zero_stage: int, micro_batch: int, grad_clip: float = 1.0,
                   path: str | Path | None = None) -> dict[str, Any]:
    if path is None:
        path = CONFIG_DIR / ("zero0.json" if zero_stage == 0 else "zero2.json")
    cfg = json.loads(Path(path).read_text())
    cfg["train_micro_batch_size_per_gpu"] = micro_batch
    cfg["gradient_clipping"] = grad_clip
    cfg.setdefault("zero_optimization", {})["stage"] = zero_stage
    return cfg


def make_engine(model: torch.nn.Module, *, lr: float, weight_decay: float = 0.01,
                zero_stage: int = 0, micro_batch: int = 64, grad_clip: float = 1.0,
                ds_config: str | Path | None = None):
    """A DeepSpeed engine around ``model`` with AdamW. Returns the engine."""
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    ensure_single_process_env()
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt,
        config=load_ds_config(zero_stage, micro_batch, grad_clip, ds_config))
    return engine


def set_lr(engine, lr: float) -> None:
    for g in engine.optimizer.param_groups:
        g["lr"] = lr


def save(engine, directory: str | Path, step: int, extra: dict | None = None) -> None:
    """Checkpoint (model, optimizer, step) under ``directory``; ``latest`` points at it."""
    engine.save_checkpoint(str(directory), tag=f"step{step}",
                           client_state={"step": step, **(extra or {})})


def load(engine, directory: str | Path) -> dict | None:
    """Resume from the latest checkpoint in ``directory``; None if there is none."""
    if not (Path(directory) / "latest").exists():
        return None
    _, client = engine.load_checkpoint(str(directory))
    return client

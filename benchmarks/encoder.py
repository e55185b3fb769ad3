"""Image encoder benchmark: the frozen EfficientNet-Lite0 on torch eager against ONNX Runtime,
alone and inside the learning loop.

1. Per-frame time of ``ImageEncoder.encode`` at batch 1 (what an acting policy pays) and batch
   64 (what critic scoring and the learner pay), torch eager against ONNX Runtime, one thread,
   and the time of a frame the memo already holds.
2. The same learning loop as ``benchmarks/learning.py`` (critic rewards, the same seed, so the
   same rollouts) timed three ways in one process: torch without the memo (the baseline, what
   the encoder did before), ONNX Runtime without the memo, ONNX Runtime with it.

    python benchmarks/encoder.py [--episodes 8] [--tasks reach-v3,drawer-open-v3]

Prints a table, writes ``benchmarks/out/encoder.png`` and ends with
``encoder_speedup=<x> loop_speedup=<y>`` (batch-1 torch / ONNX Runtime time per frame; the
loop's torch-without-memo wall time / ONNX-Runtime-with-memo wall time).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "out"
sys.path.insert(0, str(Path(__file__).parent))


def per_frame_ms(enc, frames: np.ndarray, batch: int, reps: int) -> float:
    enc.encode(frames[:batch])  # warm up (and export, for ONNX Runtime)
    times = []
    for r in range(reps):
        x = frames[(r * batch) % len(frames):][:batch]
        if enc.memo:
            enc._memo.clear()
        t0 = time.perf_counter()
        enc.encode(x)
        times.append((time.perf_counter() - t0) / len(x))
    return 1000 * float(np.median(times))


# the learning loop, timed three ways: (row name, encoder backend, memo size)
LOOP_VARIANTS = [("torch, no memo (before)", "torch", 0),
                 ("onnxruntime, no memo", "onnxruntime", 0),
                 ("onnxruntime + memo (now)", "onnxruntime", 2048)]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="reach-v3,drawer-open-v3")
    ap.add_argument("--episodes", type=int, default=8, help="episodes per task in the loop")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--init", default=".cache/actor-bc2/actor.pt")
    ap.add_argument("--critic", default=".cache/critic-data/critic/critic.pt")
    ap.add_argument("--demo-store", default=".cache/critic-data/store")
    ap.add_argument("--work", default=".cache/bench/encoder")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    for p in (a.init, a.critic):
        if not Path(p).exists():
            sys.exit(f"{p} does not exist: run `vlac train --quick` first")
    return a


def encoder_ms(reps: int) -> dict[tuple[str, int], float]:
    """ms per frame per (backend, batch), and ("memo hit", 64): a batch the memo holds."""
    from vlac.cloud.models.encoders import ImageEncoder

    frames = np.random.default_rng(0).integers(0, 256, (128, 128, 128, 3), dtype=np.uint8)
    enc = {"torch": ImageEncoder("torch", memo=0), "onnxruntime": ImageEncoder("onnxruntime")}
    ms = {(k, b): per_frame_ms(e, frames, b, reps if b == 1 else 3)
          for k, e in enc.items() for b in (1, 64)}
    hit = enc["onnxruntime"]
    hit.encode(frames[:64])
    t0 = time.perf_counter()
    for _ in range(10):
        hit.encode(frames[:64])
    ms["memo hit", 64] = 1000 * (time.perf_counter() - t0) / 640
    return ms


def loop_times(a: argparse.Namespace, console) -> tuple[dict, dict[str, tuple]]:
    """The learning benchmark's job settings, and per variant (wall s, successes, steps)."""
    import learning

    # the learning benchmark's own job, PPO on critic rewards, its defaults, no final eval
    flags = learning.parser().parse_args(
        ["--tasks", a.tasks, "--episodes", str(a.episodes), "--final-eval", "0", "--init",
         a.init, "--critic", a.critic, "--demo-store", a.demo_store, "--work", a.work])
    base = learning.job(flags, "ppo-critic", 0)
    loop = {}
    for name, backend, memo in LOOP_VARIANTS:
        console.print(f"learning loop: {name} ...")
        t0 = time.perf_counter()
        log = learning.run_variant(dict(base, encoder=backend, encoder_memo=memo,
                                        work=f"{a.work}/{backend}-{memo}"))
        loop[name] = (time.perf_counter() - t0, [r["success"] for r in log],
                      sum(r["steps"] for r in log))
    return base, loop


def print_tables(console, ms: dict, loop: dict, episodes: int, n_tasks: int) -> None:
    from rich.table import Table

    t = Table(title="image encoder, one thread (ms per frame)")
    for c in ("backend", "batch 1", "batch 64", "vs torch (batch 1)"):
        t.add_column(c)
    for k in ("torch", "onnxruntime"):
        t.add_row(k, f"{ms[k, 1]:.2f}", f"{ms[k, 64]:.2f}", f"{ms['torch', 1] / ms[k, 1]:.2f}x")
    t.add_row("memo hit", "-", f"{ms['memo hit', 64]:.3f}", "-")
    console.print(t)
    names = list(loop)
    t = Table(title=f"learning loop: {episodes} episodes x {n_tasks} tasks, "
                    "critic rewards, same seed")
    for c in ("encoder", "wall s", "steps", "ms per step", "vs before", "same rollouts"):
        t.add_column(c)
    for n in names:
        wall, succ, steps = loop[n]
        t.add_row(n, f"{wall:.0f}", str(steps), f"{1000 * wall / steps:.1f}",
                  f"{loop[names[0]][0] / wall:.2f}x", str(succ == loop[names[0]][1]))
    console.print(t)


def plot(ms: dict, loop: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(loop)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].bar(["torch b1", "ORT b1", "torch b64", "ORT b64"],
              [ms["torch", 1], ms["onnxruntime", 1], ms["torch", 64], ms["onnxruntime", 64]])
    ax[0].set_ylabel("ms per frame")
    ax[0].set_title("EfficientNet-Lite0, 128 px, 1 thread")
    ax[1].bar([n.split(" (")[0] for n in names], [loop[n][0] for n in names])
    ax[1].set_ylabel("wall s")
    ax[1].set_title("learning loop")
    ax[1].tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "encoder.png", dpi=120)


def main() -> None:
    a = parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from rich.console import Console

    torch.set_num_threads(1)
    console = Console()
    ms = encoder_ms(a.reps)
    base, loop = loop_times(a, console)
    print_tables(console, ms, loop, a.episodes, len(base["tasks"]))
    plot(ms, loop, Path(a.out))
    names = list(loop)
    print(f"encoder_speedup={ms['torch', 1] / ms['onnxruntime', 1]:.2f} "
          f"loop_speedup={loop[names[0]][0] / loop[names[-1]][0]:.2f}")


if __name__ == "__main__":
    main()

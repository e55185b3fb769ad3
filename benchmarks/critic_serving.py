"""Critic serving speed: pairs scored per second by the small critic, the transformers critic
and the same checkpoint decoded by vLLM, one pair per call and a whole episode per call, on
the same frames.

    python benchmarks/critic_serving.py            # needs infra/vllm/install.sh first

The small critic runs here (random weights: its speed does not depend on them); the
transformers and vLLM critics run in vLLM's venv (``critic_serving_hf.py``) on a tiny random
InternVL checkpoint (``vlac.cloud.models.tiny``), which measures the machinery around a model
(prompt building, image processing, scheduling, the two-step decode), not an 8B model's
compute. Frames: an episode of real Meta-World frames (128 px, the corner camera). Ratios are
against the transformers critic of the same run. Prints a table, writes
``benchmarks/out/critic_serving.png`` and ends with
``vllm_pairs_per_s=<x> transformers_pairs_per_s=<y> small_pairs_per_s=<z> vllm_vs_transformers=<r>``
(whole-episode calls).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASK = "open the drawer"


def episode_frames(n: int) -> np.ndarray:
    """``n`` consecutive frames of the scripted expert on drawer-open (128 px)."""
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig

    with MetaWorldRobot(MetaWorldRobotConfig(task="drawer-open-v3", seed=3,
                                             max_steps=500)) as robot:
        obs = robot.reset()
        out = [obs.images["corner"]]
        while len(out) < n:
            res = robot.act(robot.expert_action(obs))
            obs = res.observation
            out.append(obs.images["corner"])
            if res.done:
                obs = robot.reset()
    return np.stack(out)


def timed(critic, frames: np.ndarray, singles: int, repeats: int) -> dict:
    """pairs/s one pair per call (``singles`` calls) and one episode per call (best of
    ``repeats``), after one warm-up call of each."""
    critic.critique([TASK], frames[:1], frames[1:2])
    t0 = time.perf_counter()
    for i in range(singles):
        critic.critique([TASK], frames[i:i + 1], frames[i + 1:i + 2])
    single = singles / (time.perf_counter() - t0)
    critic.episode_rewards(TASK, frames, from_first=True)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        critic.episode_rewards(TASK, frames, from_first=True)
        best = min(best, time.perf_counter() - t0)
    return {"batch_1": single, "episode": (len(frames) - 1) / best}


def small_critic(frames: np.ndarray, singles: int, repeats: int) -> dict:
    import torch

    from vlac.cloud.critic.model import SmallVLACCritic
    from vlac.cloud.models.vlac import SmallVLAC, VLACConfig

    torch.manual_seed(0)
    return timed(SmallVLACCritic(SmallVLAC(VLACConfig())), frames, singles, repeats)


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, [rows[n]["batch_1"] for n in names], 0.4, label="one pair per call")
    ax.bar(x + 0.2, [rows[n]["episode"] for n in names], 0.4, label="an episode per call")
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("pairs / s")
    ax.set_title("critic serving on this machine (tiny random InternVL for transformers/vLLM)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=65, help="frames of the episode")
    ap.add_argument("--singles", type=int, default=32, help="one-pair calls timed")
    ap.add_argument("--repeats", type=int, default=3, help="episode calls timed (best)")
    ap.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get(
        "VLAC_VLLM_VENV", ROOT / ".cache" / "vllm-venv")))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    a = ap.parse_args(argv)
    python = a.vllm_venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"no vLLM venv at {a.vllm_venv}: run infra/vllm/install.sh first")
    frames = episode_frames(a.frames)
    rows = {"small": small_critic(frames, a.singles, a.repeats)}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "frames.npy", frames)
        log = a.out / "critic_serving.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as f:  # vLLM's own chatter goes to the log
            proc = subprocess.run(
                [str(python), str(Path(__file__).with_name("critic_serving_hf.py")),
                 str(Path(tmp) / "frames.npy"), str(Path(tmp) / "hf.json"),
                 str(a.singles), str(a.repeats)], cwd=ROOT, stdout=f, stderr=f)
        if proc.returncode:
            sys.exit(f"the transformers/vLLM run failed (exit {proc.returncode}); see {log}")
        rows.update(json.loads((Path(tmp) / "hf.json").read_text()))
    ref = rows["transformers"]["episode"]
    print(f"{len(frames) - 1} pairs per episode, {a.singles} one-pair calls, "
          f"128 px frames, this machine's {os.cpu_count()} cores")
    print(f"{'critic':<14}{'pairs/s, 1 per call':>22}{'pairs/s, episode':>18}"
          f"{'vs transformers':>17}")
    for name, r in rows.items():
        print(f"{name:<14}{r['batch_1']:>22.1f}{r['episode']:>18.1f}"
              f"{r['episode'] / ref:>16.2f}x")
    plot(rows, a.out / "critic_serving.png")
    print(f"vllm_pairs_per_s={rows['vllm']['episode']:.1f} "
          f"transformers_pairs_per_s={ref:.1f} small_pairs_per_s={rows['small']['episode']:.1f} "
          f"vllm_vs_transformers={rows['vllm']['episode'] / ref:.2f}")
    return rows


if __name__ == "__main__":
    main()

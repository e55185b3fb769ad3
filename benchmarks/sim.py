"""Simulator benchmark: Meta-World env steps per second through our MetaWorldRobot.

Measures steps/s with rendering at 64 and 128 px in 1 and 2 processes (spawn), with the
robot's fast render settings, and in the same run the baselines: Meta-World's default render
settings (multisampling, shadows, reflections) and stepping without rendering.

    python benchmarks/sim.py [--steps 600] [--task push-v3]

Prints a table, writes benchmarks/out/sim.png, and ends with ``steps_per_s_128=<x>``
(1 process, 128 px, rendering, fast settings).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
import warnings
from pathlib import Path

OUT = Path(__file__).parent / "out"


def _worker(task: str, size: int, steps: int, mode: str, seed: int, start, out) -> None:
    warnings.filterwarnings("ignore")
    import numpy as np

    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig

    robot = MetaWorldRobot(MetaWorldRobotConfig(task=task, image_size=size, seed=seed,
                                                max_steps=500))
    robot.connect()
    env = robot._env
    if mode == "default":  # undo the fast settings: Meta-World's own render quality
        import mujoco

        fresh = mujoco.MjModel.from_xml_path(env.model_name)
        env.model.vis.quality.offsamples = fresh.vis.quality.offsamples
        env.model.light_castshadow[:] = fresh.light_castshadow
        env.model.mat_reflectance[:] = fresh.mat_reflectance
    if mode == "no-render":
        robot._render = lambda: np.zeros((size, size, 3), np.uint8)
    rng = np.random.default_rng(seed)
    robot.reset()
    for _ in range(10):  # warm up the renderer
        robot.act(rng.uniform(-1, 1, 4))
    start.wait()
    t0 = time.perf_counter()
    done_steps = 0
    while done_steps < steps:
        res = robot.act(rng.uniform(-1, 1, 4))
        done_steps += 1
        if res.done:
            robot.reset()
    out.put((done_steps, time.perf_counter() - t0))
    robot.close()


def measure(task: str, size: int, procs: int, steps: int, mode: str) -> float:
    ctx = mp.get_context("spawn")  # fork hangs once a parent has rendered
    start, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(task, size, steps, mode, i, start, out))
          for i in range(procs)]
    for p in ps:
        p.start()
    time.sleep(0.1)
    start.set()
    results = [out.get(timeout=600) for _ in ps]
    for p in ps:
        p.join(30)
    return sum(n / dt for n, dt in results)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['size']}px\n{r['procs']} proc\n{r['mode']}" for r in rows]
    colors = {"fast": "tab:green", "default": "tab:gray", "no-render": "tab:blue"}
    ax.bar(range(len(rows)), [r["steps_per_s"] for r in rows],
           color=[colors[r["mode"]] for r in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("env steps/s")
    ax.set_title("Meta-World through MetaWorldRobot, 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=600, help="steps per process per cell")
    ap.add_argument("--task", default="push-v3")
    args = ap.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    console = Console(width=100)
    cells = [(64, 1, "fast"), (64, 2, "fast"), (128, 1, "fast"), (128, 2, "fast"),
             (128, 1, "default"), (128, 1, "no-render")]
    rows = []
    for size, procs, mode in track(cells, description="measuring", console=console):
        rows.append({"size": size, "procs": procs, "mode": mode,
                     "steps_per_s": measure(args.task, size, procs, args.steps, mode)})
    base = next(r["steps_per_s"] for r in rows if r["mode"] == "default")
    table = Table(title=f"Meta-World {args.task}, {args.steps} steps per process")
    for col in ("image", "processes", "render settings", "steps/s", "vs default render"):
        table.add_column(col)
    for r in rows:
        table.add_row(f"{r['size']}px", str(r["procs"]), r["mode"], f"{r['steps_per_s']:.0f}",
                      f"{r['steps_per_s'] / base:.1f}x" if r["size"] == 128 else "")
    console.print(table)
    plot(rows, OUT / "sim.png")
    console.print(f"plot: {OUT / 'sim.png'}")
    value = next(r["steps_per_s"] for r in rows
                 if (r["size"], r["procs"], r["mode"]) == (128, 1, "fast"))
    print(f"steps_per_s_128={value:.0f}")
    return value


if __name__ == "__main__":
    sys.exit(0 if main() > 0 else 1)

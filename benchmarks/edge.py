"""Edge benchmark: the same actor as torch fp32 eager, ONNX Runtime fp32 and ONNX Runtime INT8.

On the same frames, one thread each, batch 1, the full graph (uint8 frame -> preprocessing ->
EfficientNet-Lite0 -> fusion transformer -> 4 autoregressive action tokens):
- per-action latency p50/p99;
- artifact sizes;
- greedy-token agreement of each ONNX graph with the learner's torch actor on held-out
  demonstration frames (frames of episodes not used for INT8 calibration), and the log-prob gap;
- control-loop rate of the edge agent (Meta-World rendering + INT8 policy), steps/s.

The learner's actor is the torch head on its own image encoder's features: for an actor
pretrained on its INT8 encoder (the default) those are the INT8 graph's features, for an older
actor the fp32 network's. Rows:
- ``torch fp32 eager``: the whole network in fp32 on torch (the speed baseline);
- ``onnxruntime fp32 network``: the same fp32 network exported (the size baseline);
- ``onnxruntime fp32``, ``onnxruntime int8``: ``vlac actor export``'s two artifacts (for an
  INT8-encoder actor: its encoder + fp32 head, and its encoder + INT8-weight head).

    python benchmarks/edge.py [--actor .cache/actor-bc2/actor.pt]
                              [--store-root .cache/critic-data/store]

Needs the actor (default: the learning benchmark's 2-demo imitation actor) and demonstrations
of every ``--tasks`` task in ``--store-root`` (the held-out frames); refuses without them,
naming the commands that make them (benchmarks/artifacts.py). Exports the actor first
(``vlac actor export``) when ``--export-dir`` (default: the actor's folder's ``export/``) has
no INT8 graph or one older than the actor. Ends with
``int8_speedup=<x> size_ratio=<y> token_agreement=<z>`` (INT8 vs torch fp32 eager latency p50,
INT8 vs fp32 network ONNX size, INT8 per-token greedy agreement with the learner's actor).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from artifacts import DEFAULT_ACTOR, DEFAULT_STORE, ActorSource, choose, ensure_int8

from vlac.shared.tasks import HEADLINE_TASKS

if TYPE_CHECKING:
    from vlac.cloud.actor.export import ActorGraph, ActorHead
    from vlac.cloud.actor.model import TorchActor

OUT = Path(__file__).parent / "out"


def latencies(fn, inputs, repeats: int) -> np.ndarray:
    fn(inputs[0])
    out = []
    for i in range(repeats):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


@dataclass
class Actors:
    """The learner's actor, the graphs the rows run and the files ``vlac actor export`` wrote."""

    actor: TorchActor  # the learner's actor (torch head on its own image encoder)
    full: TorchActor  # the same actor on the fp32 torch image encoder
    graph: ActorGraph  # ActorGraph(full): the whole network in fp32 (the torch fp32 eager row)
    head: ActorHead  # ActorHead(actor): the torch head alone, on precomputed image features
    export_dir: Path
    fp32: Path
    int8: Path


@dataclass
class Measured:
    """Per row: latencies (ms), artifact sizes, agreement with the learner's actor."""

    latency: dict[str, np.ndarray]
    sizes: dict[str, int]
    agree: dict[str, float]  # share of greedy tokens equal to the learner's
    agree_frame: dict[str, float]  # share of frames with all 4 tokens equal
    lp_gap: dict[str, float]  # mean over frames of the max |log-prob difference|


class _NullRecorder:
    def add(self, s):
        pass

    def end(self, *a, **k):
        pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--actor", type=Path, default=DEFAULT_ACTOR,
                    help="actor checkpoint (vlac actor pretrain)")
    ap.add_argument("--store-root", type=Path, default=DEFAULT_STORE,
                    help="episode store with demonstrations of every --tasks task")
    ap.add_argument("--export-dir", type=Path, default=None,
                    help="the actor's export (default: <actor folder>/export), made when it "
                         "has no INT8 graph or one older than the actor")
    ap.add_argument("--tasks", default=",".join(HEADLINE_TASKS))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--loop-steps", type=int, default=150)
    ap.add_argument("--fp32-convs", type=int, default=2,
                    help="leading convolutions kept fp32 when exporting (vlac actor export)")
    return ap.parse_args(argv)


def actor_source(args: argparse.Namespace, tasks: list[str]) -> ActorSource:
    return ActorSource(actor=args.actor, store_root=args.store_root, export_dir=args.export_dir,
                       tasks=tuple(tasks))


def load_actors(args: argparse.Namespace, tasks: list[str]) -> Actors:
    """Exports the actor when its export has no current INT8 graph, then loads it; refuses
    (``SystemExit``) without the actor or demonstrations of every task."""
    from vlac.cloud.actor.export import ActorGraph, ActorHead
    from vlac.cloud.actor.model import TorchActor
    from vlac.cloud.models.encoders import ImageEncoder

    src = actor_source(args, tasks)
    ensure_int8(src, "actor", fp32_convs=args.fp32_convs)
    export_dir = src.out
    network = export_dir / "actor_fp32_network.onnx"  # onnx_files makes it again if missing
    if network.exists() and network.stat().st_mtime < args.actor.stat().st_mtime:
        network.unlink()  # an older actor's
    actor = TorchActor.load(args.actor)
    full = TorchActor(actor.model, actor.tokenizer.low, actor.tokenizer.high,
                      image_encoder=ImageEncoder("torch"), text_encoder=actor.text_encoder)
    return Actors(actor=actor, full=full, graph=ActorGraph(full).eval(),
                  head=ActorHead(actor).eval(), export_dir=export_dir,
                  fp32=export_dir / "actor_fp32.onnx", int8=export_dir / "actor_int8.onnx")


def held_out_inputs(actor: TorchActor, store_root: Path, tasks: list[str],
                    frames: int) -> list[dict]:
    """Graph inputs from the last 2 episodes of each task (calibration takes the first ones)."""
    from vlac.cloud.actor.export import example_inputs
    from vlac.cloud.store.episodes import EpisodeStore

    store = EpisodeStore(store_root)
    inputs = []
    for t in tasks:
        eps = sorted([e for e in store.list_episodes() if e.get("task_id") == t],
                     key=lambda e: e["episode_id"])[-2:]
        for e in eps:
            ep = store.load_episode(e["robot_id"], e["episode_id"])
            text = actor.text_encoder.encode([e["task"]])[0]
            for i in np.linspace(0, len(ep) - 1, frames // (2 * len(tasks))).astype(int):
                inputs.append(example_inputs(actor, ep.steps.images[actor.camera][i],
                                             ep.steps.proprio[i], text))
    return inputs


def onnx_files(a: Actors, tasks: list[str], inputs: list[dict]) -> dict[str, Path]:
    """The ONNX rows' files; exports the fp32 network for an INT8-encoder actor if missing."""
    from vlac.cloud.actor.export import export_fp32, metadata
    from vlac.shared import tasks as task_text

    actor = a.actor
    network = a.export_dir / "actor_fp32_network.onnx"
    if actor.int8_encoder is None:
        network = a.fp32
    elif not network.exists():
        sentences = sorted({s for t in tasks for s in task_text.instructions(t)})
        export_fp32(a.full, network, metadata(actor, sentences, actor.version,
                                              inputs[0]["image"].shape[1:]), inputs[0])
    files = {"fp32 network": network, "fp32": a.fp32, "int8": a.int8}
    if network == a.fp32:
        del files["fp32 network"]
    return files


def sessions(files: dict[str, Path]) -> dict:
    """One single-threaded CPU ONNX Runtime session per file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for k, p in files.items()}


def torch_runners(a: Actors):
    """``(run_torch, run_learner)``: the torch fp32 eager row and the learner's actor."""
    import torch

    names = ("image", "proprio", "text", "gumbel", "temperature")

    def run_torch(x):
        with torch.no_grad():
            return [o.numpy() for o in a.graph(*(torch.from_numpy(x[k]) for k in names))]

    def run_learner(x):  # the learner's actor: torch head on its own encoder's features
        if a.actor.int8_encoder is None:
            return run_torch(x)
        feat = torch.from_numpy(a.actor.image_encoder.encode(x["image"]).astype(np.float32))
        with torch.no_grad():
            return [o.numpy() for o in a.head(feat, *(torch.from_numpy(x[k])
                                                      for k in names[1:]))]

    return run_torch, run_learner


def measure(a: Actors, sess: dict, files: dict[str, Path], inputs: list[dict],
            repeats: int) -> Measured:
    run_torch, run_learner = torch_runners(a)
    results = {"torch fp32 eager": latencies(run_torch, inputs, repeats)}
    for k, s in sess.items():
        results[f"onnxruntime {k}"] = latencies(lambda x, s=s: s.run(None, x), inputs, repeats)
    ref = [run_learner(x) for x in inputs]
    agree, agree_frame, lp_gap = {}, {}, {}
    for k, s in sess.items():
        outs = [s.run(None, x) for x in inputs]
        same = np.array([o[0][0] == r[0][0] for o, r in zip(outs, ref, strict=True)])
        agree[k] = float(same.mean())
        agree_frame[k] = float(same.all(1).mean())
        lp_gap[k] = float(np.mean([np.abs(o[1] - r[1]).max() for o, r in
                                   zip(outs, ref, strict=True)]))
    sizes = {k: os.path.getsize(p) for k, p in files.items()}
    sizes.setdefault("fp32 network", sizes["fp32"])
    return Measured(latency=results, sizes=sizes, agree=agree, agree_frame=agree_frame,
                    lp_gap=lp_gap)


def control_loop_hz(int8: Path, task: str, loop_steps: int) -> float:
    """Edge agent steps/s with Meta-World rendering and the greedy INT8 policy."""
    from vlac.edge.agent import run_episode
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
    from vlac.edge.runtime import OnnxPolicy

    policy = OnnxPolicy(int8, greedy=True)
    steps, t0 = 0, time.perf_counter()
    with MetaWorldRobot(MetaWorldRobotConfig(task=task, seed=5, max_steps=150,
                                             instruction=0)) as robot:
        while steps < loop_steps:
            steps += run_episode(robot, policy, lambda _t: _NullRecorder()).steps
    return steps / (time.perf_counter() - t0)


def print_table(console, m: Measured, int8_encoder: bool) -> None:
    from rich.table import Table

    table = Table(title="actor on the edge: batch 1, 1 thread, 128x128 frame -> 4 tokens; "
                  "agreement with the learner's actor "
                  f"({'INT8' if int8_encoder else 'fp32'} encoder features)")
    for col in ("runtime", "p50 ms", "p99 ms", "vs torch", "size MB", "token agreement",
                "all 4 agree", "max |dlogp|"):
        table.add_column(col)
    base = np.percentile(m.latency["torch fp32 eager"], 50)
    for k, lat in m.latency.items():
        key = k.split(" ", 1)[1] if k.startswith("onnx") else None
        table.add_row(k, f"{np.percentile(lat, 50):.2f}", f"{np.percentile(lat, 99):.2f}",
                      f"{base / np.percentile(lat, 50):.2f}x",
                      f"{m.sizes[key or 'fp32 network'] / 1e6:.1f}",
                      f"{m.agree[key]:.3f}" if key else "-",
                      f"{m.agree_frame[key]:.3f}" if key else "-",
                      f"{m.lp_gap[key]:.3f}" if key else "-")
    console.print(table)


def main(argv: list[str] | None = None) -> dict:
    warnings.filterwarnings("ignore")
    args = parse_args(argv)
    tasks = args.tasks.split(",")
    choose(actor_source(args, tasks), "actor")  # refuses before anything heavy
    import torch
    from rich.console import Console

    torch.set_num_threads(1)
    console = Console(width=110)
    a = load_actors(args, tasks)
    inputs = held_out_inputs(a.actor, args.store_root, tasks, args.frames)
    files = onnx_files(a, tasks, inputs)
    m = measure(a, sessions(files), files, inputs, args.repeats)
    loop_hz = control_loop_hz(a.int8, tasks[0], args.loop_steps)

    print_table(console, m, a.actor.int8_encoder is not None)
    console.print(f"edge agent control loop with rendering (INT8): {loop_hz:.1f} steps/s; "
                  f"{len(inputs)} held-out frames")
    OUT.mkdir(exist_ok=True)
    _plot(m.latency, OUT / "edge.png")
    base = np.percentile(m.latency["torch fp32 eager"], 50)
    speedup = base / np.percentile(m.latency["onnxruntime int8"], 50)
    ratio, agree = m.sizes["int8"] / m.sizes["fp32 network"], m.agree
    print(f"int8_speedup={speedup:.2f} size_ratio={ratio:.2f} token_agreement={agree['int8']:.3f}")
    return {"speedup": speedup, "size_ratio": ratio, "agreement": agree, "loop_hz": loop_hz}


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot(list(results.values()), showfliers=False)
    ax.set_xticks(range(1, len(results) + 1), list(results), fontsize=8)
    ax.set_ylabel("ms per action")
    ax.set_title("actor latency, batch 1, 1 thread")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
    sys.exit(0)

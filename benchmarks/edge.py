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

    python benchmarks/edge.py --actor .cache/actor/actor.pt --store-root .cache/store

Exports the actor first if ``--export-dir`` has no .onnx files. Ends with
``int8_speedup=<x> size_ratio=<y> token_agreement=<z>`` (INT8 vs torch fp32 eager latency p50,
INT8 vs fp32 network ONNX size, INT8 per-token greedy agreement with the learner's actor).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from vlac.shared.tasks import HEADLINE_TASKS

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


def main(argv: list[str] | None = None) -> dict:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--actor", type=Path, default=Path(".cache/actor/actor.pt"))
    ap.add_argument("--store-root", type=Path, default=Path(".cache/store"))
    ap.add_argument("--export-dir", type=Path, default=None)
    ap.add_argument("--tasks", default=",".join(HEADLINE_TASKS))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--loop-steps", type=int, default=150)
    ap.add_argument("--fp32-convs", type=int, default=2,
                    help="leading convolutions kept fp32 when exporting (vlac actor export)")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch
    from rich.console import Console
    from rich.table import Table

    from vlac.cloud.actor.export import (
        ActorExportConfig,
        ActorGraph,
        ActorHead,
        example_inputs,
        export_fp32,
        metadata,
    )
    from vlac.cloud.actor.export import main as export
    from vlac.cloud.actor.model import TorchActor
    from vlac.cloud.models.encoders import ImageEncoder
    from vlac.cloud.store.episodes import EpisodeStore
    from vlac.shared import tasks as task_text

    torch.set_num_threads(1)
    console = Console(width=110)
    tasks = args.tasks.split(",")
    export_dir = args.export_dir or args.actor.parent / "export"
    if not (export_dir / "actor_int8.onnx").exists():
        export(ActorExportConfig(actor=args.actor, out=export_dir, store_root=args.store_root,
                                 tasks=tasks, fp32_convs=args.fp32_convs))
    fp32, int8 = export_dir / "actor_fp32.onnx", export_dir / "actor_int8.onnx"
    actor = TorchActor.load(args.actor)
    full = TorchActor(actor.model, actor.tokenizer.low, actor.tokenizer.high,
                      image_encoder=ImageEncoder("torch"), text_encoder=actor.text_encoder)
    graph = ActorGraph(full).eval()  # the whole network in fp32 (torch encoder)
    head = ActorHead(actor).eval()
    # held-out frames: the last episodes of each task (calibration takes the first ones)
    store = EpisodeStore(args.store_root)
    inputs = []
    for t in tasks:
        eps = sorted([e for e in store.list_episodes() if e.get("task_id") == t],
                     key=lambda e: e["episode_id"])[-2:]
        for e in eps:
            ep = store.load_episode(e["robot_id"], e["episode_id"])
            text = actor.text_encoder.encode([e["task"]])[0]
            for i in np.linspace(0, len(ep) - 1, args.frames // (2 * len(tasks))).astype(int):
                inputs.append(example_inputs(actor, ep.steps.images[actor.camera][i],
                                             ep.steps.proprio[i], text))
    network = export_dir / "actor_fp32_network.onnx"
    if actor.int8_encoder is None:
        network = fp32
    elif not network.exists():
        sentences = sorted({s for t in tasks for s in task_text.instructions(t)})
        export_fp32(full, network, metadata(actor, sentences, actor.version,
                                            inputs[0]["image"].shape[1:]), inputs[0])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    files = {"fp32 network": network, "fp32": fp32, "int8": int8}
    if network == fp32:
        del files["fp32 network"]
    sess = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for k, p in files.items()}
    names = ("image", "proprio", "text", "gumbel", "temperature")

    def run_torch(x):
        with torch.no_grad():
            return [o.numpy() for o in graph(*(torch.from_numpy(x[k]) for k in names))]

    def run_learner(x):  # the learner's actor: torch head on its own encoder's features
        if actor.int8_encoder is None:
            return run_torch(x)
        feat = torch.from_numpy(actor.image_encoder.encode(x["image"]).astype(np.float32))
        with torch.no_grad():
            return [o.numpy() for o in head(feat, *(torch.from_numpy(x[k])
                                                    for k in names[1:]))]

    results = {"torch fp32 eager": latencies(run_torch, inputs, args.repeats)}
    for k, s in sess.items():
        results[f"onnxruntime {k}"] = latencies(lambda x, s=s: s.run(None, x), inputs,
                                                args.repeats)
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
    # control loop with rendering
    from vlac.edge.agent import run_episode
    from vlac.edge.robots.metaworld import MetaWorldRobot, MetaWorldRobotConfig
    from vlac.edge.runtime import OnnxPolicy

    class Null:
        def add(self, s):
            pass

        def end(self, *a, **k):
            pass

    policy = OnnxPolicy(int8, greedy=True)
    steps, t0 = 0, time.perf_counter()
    with MetaWorldRobot(MetaWorldRobotConfig(task=tasks[0], seed=5, max_steps=150,
                                             instruction=0)) as robot:
        while steps < args.loop_steps:
            steps += run_episode(robot, policy, lambda _t: Null()).steps
    loop_hz = steps / (time.perf_counter() - t0)

    table = Table(title="actor on the edge: batch 1, 1 thread, 128x128 frame -> 4 tokens; "
                  "agreement with the learner's actor "
                  f"({'INT8' if actor.int8_encoder else 'fp32'} encoder features)")
    for col in ("runtime", "p50 ms", "p99 ms", "vs torch", "size MB", "token agreement",
                "all 4 agree", "max |dlogp|"):
        table.add_column(col)
    base = np.percentile(results["torch fp32 eager"], 50)
    for k, lat in results.items():
        key = k.split(" ", 1)[1] if k.startswith("onnx") else None
        table.add_row(k, f"{np.percentile(lat, 50):.2f}", f"{np.percentile(lat, 99):.2f}",
                      f"{base / np.percentile(lat, 50):.2f}x",
                      f"{sizes[key or 'fp32 network'] / 1e6:.1f}",
                      f"{agree[key]:.3f}" if key else "-",
                      f"{agree_frame[key]:.3f}" if key else "-",
                      f"{lp_gap[key]:.3f}" if key else "-")
    console.print(table)
    console.print(f"edge agent control loop with rendering (INT8): {loop_hz:.1f} steps/s; "
                  f"{len(inputs)} held-out frames")
    OUT.mkdir(exist_ok=True)
    _plot(results, OUT / "edge.png")
    speedup = base / np.percentile(results["onnxruntime int8"], 50)
    ratio = sizes["int8"] / sizes["fp32 network"]
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

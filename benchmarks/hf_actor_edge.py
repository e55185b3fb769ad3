"""A transformers actor on the robot: the exported ONNX graphs (fp32, INT8-stored weights)
against the learner's torch actor, on the same observations.

    python benchmarks/hf_actor_edge.py

The actor is a tiny random InternVL (``vlac.cloud.models.tiny.tiny_internvl_actor``), so the
figures measure the machinery (the robot's prompt building, the prefill and the KV-cached
decode of 4 action tokens, ONNX Runtime against eager torch), not a 2B model's compute; a
random model's greedy token hardly depends on its input, so agreement is measured on sampled
tokens with the same Gumbel noise on both sides (as the learner's importance weights see
them). Frames: real Meta-World frames (128 px, the corner camera). One thread each. Prints a
table, writes ``benchmarks/out/hf_actor_edge.png`` and ends with
``hf_onnx_fp32_agreement=<x> hf_onnx_int8_agreement=<y> hf_onnx_int8_ms=<a> hf_torch_ms=<b>
hf_onnx_vs_torch=<r>`` (r: torch's time per action over the INT8 graph's).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASK = "open the drawer"


def observations(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from critic_serving import episode_frames

    frames = episode_frames(n)
    rng = np.random.default_rng(0)
    return [(f, rng.uniform(-1, 1, 4).astype(np.float32)) for f in frames]


def measure(act, obs, repeats: int) -> tuple[list[tuple[np.ndarray, float]], float]:
    """(tokens, summed log-prob) per observation with the noise of seed i, and the best of
    ``repeats`` mean milliseconds per action."""
    outs, best = [], float("inf")
    for r in range(repeats):
        t0 = time.perf_counter()
        run = [act(i, image, proprio) for i, (image, proprio) in enumerate(obs)]
        best = min(best, (time.perf_counter() - t0) / len(obs) * 1e3)
        if r == 0:
            outs = run
    return outs, best


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2))
    names = list(rows)
    a.bar(names, [rows[n]["ms"] for n in names])
    a.set_ylabel("ms per action (1 thread)")
    b.bar(names, [rows[n]["agreement"] for n in names])
    b.set_ylim(0, 1.05)
    b.set_ylabel("tokens equal to torch's")
    fig.suptitle("transformers actor on the robot (tiny random InternVL)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--observations", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes (best)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    a = ap.parse_args(argv)
    import torch

    from vlac.cloud.actor.hf_export import export_hf_actor
    from vlac.cloud.models.hf_actor import TransformersActor
    from vlac.cloud.models.tiny import tiny_internvl_actor
    from vlac.edge.runtime import OnnxPolicy

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")  # the tokenizer's and the exporter's chatter
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    obs = observations(a.observations)
    with tempfile.TemporaryDirectory() as tmp:
        actor = TransformersActor(tiny_internvl_actor(Path(tmp) / "actor"),
                                  images_kwargs={"crop_to_patches": False})
        paths = export_hf_actor(actor, Path(tmp) / "export",
                                [(f, p, TASK) for f, p in obs[:4]])

        def torch_act(i, image, proprio):
            actor.rng = np.random.default_rng(i)
            _, tokens, logp, _ = actor.act(image, proprio, TASK)
            return tokens, logp

        ref, torch_ms = measure(torch_act, obs, a.repeats)
        rows = {"torch": {"ms": torch_ms, "agreement": 1.0, "logp_gap": 0.0,
                          "mb": sum(f.stat().st_size for f in (Path(tmp) / "actor").iterdir()
                                    if f.suffix == ".safetensors") / 1e6}}
        for precision, path in paths.items():
            policy = OnnxPolicy(path)

            def onnx_act(i, image, proprio, policy=policy):
                policy.rng = np.random.default_rng(i)
                tokens, logps, _ = policy.run(image, proprio, TASK)
                return tokens, float(logps.sum())

            got, ms = measure(onnx_act, obs, a.repeats)
            pairs = list(zip(got, ref, strict=True))
            rows[f"onnx {precision}"] = {
                "ms": ms, "mb": path.stat().st_size / 1e6,
                "agreement": float(np.mean([np.mean(g[0] == r[0]) for g, r in pairs])),
                "logp_gap": float(np.mean([abs(g[1] - r[1]) for g, r in pairs]))}
    print(f"{len(obs)} observations (128 px Meta-World frames), prompt {policy.prompt.length} "
          f"tokens, 4 action tokens, sampled with the same noise, 1 thread")
    print(f"{'actor':<12}{'ms/action':>11}{'MB':>8}{'tokens = torch':>16}{'|dlogp|':>10}")
    for name, r in rows.items():
        print(f"{name:<12}{r['ms']:>11.2f}{r['mb']:>8.2f}{r['agreement']:>16.3f}"
              f"{r['logp_gap']:>10.4f}")
    plot(rows, a.out / "hf_actor_edge.png")
    int8 = rows["onnx int8"]
    print(f"hf_onnx_fp32_agreement={rows['onnx fp32']['agreement']:.3f} "
          f"hf_onnx_int8_agreement={int8['agreement']:.3f} hf_onnx_int8_ms={int8['ms']:.2f} "
          f"hf_torch_ms={torch_ms:.2f} hf_onnx_vs_torch={torch_ms / int8['ms']:.2f}")
    return rows


if __name__ == "__main__":
    main()

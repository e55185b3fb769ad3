"""`vlac actor export`: the actor as one ONNX file, fp32 and static INT8 (QDQ).

The graph takes the raw camera frame and does everything on the robot:

    inputs   image uint8 (1, H, W, 3), proprio float32 (1, P), text float32 (1, 384),
             gumbel float32 (1, A, bins) (zeros: greedy), temperature float32 (1,)
    outputs  tokens int64 (1, A), logprobs float32 (1, A), value float32 (1,)

Image preprocessing ((x - 127) / 128), EfficientNet-Lite0, the fusion transformer and the
autoregressive decode (unrolled over the A action dimensions, sampling by Gumbel-max) are all
inside. The metadata (``vlac`` key of the model's metadata_props, and a ``.json`` beside the
file) holds the action tokenizer spec, the observation spec, the policy version and the
sentence embeddings of the tasks the policy was exported for: robots carry no text encoder,
so they look the sentence up (an unknown sentence is refused with the list of known ones).

INT8: ``quant_pre_process`` then static QDQ quantization (per-channel weights, uint8
activations) calibrated on demonstration frames, all Conv/MatMul/Gemm except the first
``fp32_convs`` (2) convolutions; QDQ is also what TensorRT's explicit
quantization consumes on a Jetson (``infra/tensorrt/build_engine.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlac.cloud.actor import TorchActor
from vlac.cloud.encoders import ImageEncoder
from vlac.shared import tasks as task_text
from vlac.shared.config import check, describe, opt

KEEP_FP32_CONVS = 2
INPUTS = ("image", "proprio", "text", "gumbel", "temperature")
OUTPUTS = ("tokens", "logprobs", "value")


class ActorGraph(nn.Module):
    def __init__(self, actor: TorchActor) -> None:
        super().__init__()
        self.encoder = actor.image_encoder
        self.model = actor.model

    def forward(self, image, proprio, text, gumbel, temperature):
        feat = self.encoder.features(image)
        return self.model.act(text, feat, proprio, gumbel, temperature)


@dataclass
class ActorExportConfig:
    actor: Path = opt(Path(".cache/actor/actor.pt"), "Actor checkpoint to export.")
    out: Path = opt(Path(".cache/actor/export"), "Folder for the .onnx files and metadata.")
    store_root: Path = opt(Path(".cache/store"), "Episode store: calibration frames.")
    tasks: list[str] = opt(["reach-v3", "button-press-v3", "drawer-open-v3", "push-v3"],
                           "Tasks whose sentences the policy is exported with.")
    calibration_frames: int = opt(128, "Demonstration frames used to calibrate INT8.")
    version: int = opt(0, "Policy version written into the metadata.")
    fp32_convs: int = opt(KEEP_FP32_CONVS, "Leading EfficientNet convolutions kept in fp32 "
                          "in the INT8 graph: more gives closer tokens to torch and a "
                          "slower graph (the early convolutions see the largest maps).")

    def __post_init__(self) -> None:
        self.actor, self.out, self.store_root = Path(self.actor), Path(self.out), \
            Path(self.store_root)
        check(self.actor.exists(), "actor", f"{self.actor} does not exist; run `vlac actor "
              "pretrain` first")
        check(self.calibration_frames >= 8, "calibration_frames", "use at least 8")
        check(self.fp32_convs >= 0, "fp32_convs", "must be >= 0")


def example_inputs(actor: TorchActor, image: np.ndarray, proprio: np.ndarray,
                   text: np.ndarray, greedy: bool = True, rng=None) -> dict[str, np.ndarray]:
    a, bins = actor.model.cfg.action_dim, actor.model.cfg.action_bins
    g = np.zeros((1, a, bins), np.float32) if greedy else \
        rng.gumbel(size=(1, a, bins)).astype(np.float32)
    return {"image": image[None].astype(np.uint8), "proprio": proprio[None].astype(np.float32),
            "text": text[None].astype(np.float32), "gumbel": g,
            "temperature": np.ones(1, np.float32)}


def metadata(actor: TorchActor, sentences: list[str], version: int,
             image_shape: tuple[int, ...]) -> dict:
    emb = actor.text_encoder.encode(sentences)
    return {
        "format": "vlac-actor-onnx", "format_version": 1, "policy_version": version,
        "inputs": list(INPUTS), "outputs": list(OUTPUTS),
        "action_tokenizer": actor.tokenizer.spec(),
        "observation": {"camera": actor.camera, "image_shape": list(image_shape),
                        "proprio_dim": actor.model.cfg.proprio_dim},
        "action_dim": actor.model.cfg.action_dim, "action_bins": actor.model.cfg.action_bins,
        "text_embeddings": {s: [round(float(x), 6) for x in e]
                            for s, e in zip(sentences, emb, strict=True)},
    }


def export_fp32(actor: TorchActor, path: Path, meta: dict, sample: dict[str, np.ndarray]
                ) -> Path:
    import onnx

    graph = ActorGraph(actor).eval()
    args = tuple(torch.from_numpy(sample[k]) for k in INPUTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, args, str(path), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamo=True, external_data=False,
                          verbose=False)
    model = onnx.load(str(path))
    _set_meta(model, dict(meta, precision="fp32"))
    onnx.save(model, str(path))
    return path


def _set_meta(model, meta: dict) -> None:
    del model.metadata_props[:]
    p = model.metadata_props.add()
    p.key, p.value = "vlac", json.dumps(meta)


class _Calibration:
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def quantize_int8(fp32: Path, out: Path, samples: list[dict[str, np.ndarray]],
                  meta: dict, fp32_convs: int = KEEP_FP32_CONVS) -> Path:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        # The stem conv and the first depthwise conv stay fp32: quantized, they alone drop
        # the EfficientNet feature cosine to 0.80 (0.98 without them); they are tiny.
        quantize_static(str(pre), str(out), _Calibration(samples),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
                        nodes_to_exclude=convs[:fp32_convs])
    model = onnx.load(str(out))
    _set_meta(model, dict(meta, precision="int8"))
    onnx.save(model, str(out))
    return out


def calibration_samples(actor: TorchActor, store_root: Path, tasks: list[str], n: int,
                        seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Frames, proprio and sentences from stored demonstrations of the tasks."""
    from vlac.cloud.store import EpisodeStore

    store = EpisodeStore(store_root)
    rng = np.random.default_rng(seed)
    eps = [e for e in store.list_episodes() if e.get("task_id") in tasks]
    if not eps:
        raise ValueError(f"no episodes of {tasks} in {store_root} to calibrate INT8 with; "
                         "collect demonstrations first")
    out = []
    per = max(1, n // len(eps))
    for e in eps:
        ep = store.load_episode(e["robot_id"], e["episode_id"])
        text = actor.text_encoder.encode([e["task"]])[0]
        for t in rng.choice(len(ep), min(per, len(ep)), replace=False):
            out.append(example_inputs(actor, ep.steps.images[actor.camera][t],
                                      ep.steps.proprio[t], text))
        if len(out) >= n:
            break
    return out[:n]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main(cfg: ActorExportConfig) -> dict:
    print(describe(cfg), flush=True)
    actor = TorchActor.load(cfg.actor, image_encoder=ImageEncoder())
    actor.version = cfg.version
    sentences = sorted({s for t in cfg.tasks for s in task_text.instructions(t)})
    samples = calibration_samples(actor, cfg.store_root, cfg.tasks, cfg.calibration_frames)
    meta = metadata(actor, sentences, cfg.version, samples[0]["image"].shape[1:])
    cfg.out.mkdir(parents=True, exist_ok=True)
    fp32 = export_fp32(actor, cfg.out / "actor_fp32.onnx", meta, samples[0])
    int8 = quantize_int8(fp32, cfg.out / "actor_int8.onnx", samples, meta, cfg.fp32_convs)
    (cfg.out / "actor.json").write_text(json.dumps(meta))
    result = {"fp32": str(fp32), "int8": str(int8),
              "fp32_bytes": os.path.getsize(fp32), "int8_bytes": os.path.getsize(int8),
              "fp32_sha256": sha256(fp32), "int8_sha256": sha256(int8)}
    print(f"exported {fp32} ({result['fp32_bytes'] / 1e6:.1f} MB) and {int8} "
          f"({result['int8_bytes'] / 1e6:.1f} MB)", flush=True)
    return result

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

An actor pretrained on its INT8 image encoder (``vlac actor pretrain``'s default) is exported
as that encoder's graph, unchanged, joined to its exported head (a float16 round trip between
them, as the learner's cached features are float16):

- ``actor_fp32.onnx``: INT8 encoder + fp32 head: the learner's actor exactly;
- ``actor_int8.onnx``: INT8 encoder + head with per-channel INT8-stored weights (weight-only:
  its activations stay float, so the head's tokens move only by the weights' rounding).

An actor learnt on the fp32 encoder (older checkpoints, ``--encoder fp32``) is exported as one
fp32 graph, and its INT8 variant is static QDQ quantization of the whole graph (per-channel
weights, uint8 activations) calibrated on demonstration frames, all Conv/MatMul/Gemm except the
first ``fp32_convs`` (2) convolutions. QDQ is also what TensorRT's explicit quantization
consumes on a Jetson (``infra/tensorrt/build_engine.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlac.cloud.actor.model import TorchActor
from vlac.cloud.models.encoders import Feeds, ImageEncoder, quantize_qdq
from vlac.cloud.store.location import open_episode_store, store_location
from vlac.shared import tasks as task_text
from vlac.shared.config import check, describe, opt

log = logging.getLogger(__name__)

KEEP_FP32_CONVS = 2
INPUTS = ("image", "proprio", "text", "gumbel", "temperature")
OUTPUTS = ("tokens", "logprobs", "value")


class ActorGraph(nn.Module):
    """The whole actor on the fp32 torch encoder: frame in, tokens out."""

    def __init__(self, actor: TorchActor) -> None:
        super().__init__()
        self.encoder = actor.image_encoder
        self.model = actor.model

    def forward(self, image, proprio, text, gumbel, temperature):
        feat = self.encoder.features(image)
        return self.model.act(text, feat, proprio, gumbel, temperature)


class ActorHead(nn.Module):
    """The actor after its image encoder: features in (rounded to float16 first, exactly as
    the learner's features are), tokens out."""

    def __init__(self, actor: TorchActor) -> None:
        super().__init__()
        self.model = actor.model

    def forward(self, feat, proprio, text, gumbel, temperature):
        return self.model.act(text, feat.half().float(), proprio, gumbel, temperature)


@dataclass
class ActorExportConfig:
    actor: Path = opt(Path(".cache/actor/actor.pt"), "Actor checkpoint to export: the small "
                      "actor's .pt, or a transformers actor's checkpoint folder (the "
                      "learner's --actor.type hf saves one; cloud/actor/hf_export.py).")
    out: Path = opt(Path(".cache/actor/export"), "Folder for the .onnx files and metadata.")
    store_root: Path | str = opt(Path(".cache/store"), "Episode store: calibration frames "
                                 "(a folder or s3://BUCKET/PREFIX?endpoint=URL).")
    tasks: list[str] = opt(list(task_text.HEADLINE_TASKS),
                           "Tasks whose sentences the policy is exported with.")
    calibration_frames: int = opt(128, "Demonstration frames used to calibrate INT8 (an "
                                  "actor with its own INT8 encoder needs them only as "
                                  "example inputs).")
    version: int = opt(0, "Policy version written into the metadata.")
    fp32_convs: int = opt(KEEP_FP32_CONVS, "Actors learnt on the fp32 encoder: leading "
                          "EfficientNet convolutions kept in fp32 in the INT8 graph (more: "
                          "closer tokens to torch, slower graph). An INT8-encoder actor "
                          "fixed this at pretraining (`vlac actor pretrain --fp32-convs`).")

    low: list[float] = opt([-1.0] * 4, "Transformers actor: the action box's lower bounds.")
    high: list[float] = opt([1.0] * 4, "Transformers actor: the action box's upper bounds.")
    proprio_dim: int = opt(4, "Transformers actor: values of proprioception in the prompt.")
    camera: str = opt("corner", "Transformers actor: the camera it sees.")
    prompt_length: int = opt(0, "Transformers actor: the graph's fixed prompt length in "
                             "tokens (0: the longest calibration prompt's plus 16).")

    def __post_init__(self) -> None:
        self.actor, self.out = Path(self.actor), Path(self.out)
        self.store_root = store_location(self.store_root)
        check(len(self.low) == len(self.high), "low", "one lower bound per upper bound")
        check(self.prompt_length >= 0, "prompt_length", "must be >= 0 (0: automatic)")
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


def _trace(module: nn.Module, args: tuple, names: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), input_names=names,
                          output_names=list(OUTPUTS), dynamo=True, external_data=False,
                          verbose=False)


def export_fp32(actor: TorchActor, path: Path, meta: dict, sample: dict[str, np.ndarray]
                ) -> Path:
    """The whole actor on the fp32 encoder as one fp32 graph (actors without an INT8
    encoder; ``benchmarks/edge.py``'s unquantized reference for every actor)."""
    import onnx

    _trace(ActorGraph(actor), tuple(torch.from_numpy(sample[k]) for k in INPUTS),
           list(INPUTS), path)
    model = onnx.load(str(path))
    _set_meta(model, dict(meta, precision="fp32"))
    onnx.save(model, str(path))
    return path


def _head(actor: TorchActor, path: Path, sample: dict[str, np.ndarray]) -> Path:
    feat = actor.image_encoder.encode(sample["image"]).astype(np.float32)
    args = (torch.from_numpy(feat), *(torch.from_numpy(sample[k]) for k in INPUTS[1:]))
    _trace(ActorHead(actor), args, ["feat", *INPUTS[1:]], path)
    return path


def _int8_weights(src: Path, dst: Path) -> Path:
    """Weight-only INT8: each float weight matrix of a MatMul, Gemm or Gather is stored as
    int8 with one symmetric scale per output channel (per row for an embedding table) and
    restored by ``Cast`` and ``Mul``, which ONNX Runtime and TensorRT fold into float weights
    when they load the graph: a quarter of the bytes, no cost per action, float activations.
    ``quant_pre_process`` first folds the weights' transposes into the initializers.
    (A DequantizeLinear here would run on every action: ONNX Runtime keeps QDQ nodes out of
    constant folding, and its weight-only quantizer writes 8-bit weights only as contrib ops.)"""
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    pre.unlink()
    g = model.graph
    init = {i.name: i for i in g.initializer}
    slot = {"MatMul": 1, "Gemm": 1, "Gather": 0}
    done: dict[str, str] = {}
    restore = []
    for node in g.node:
        i = slot.get(node.op_type)
        name = node.input[i] if i is not None and len(node.input) > i else None
        if name not in init or init[name].data_type != onnx.TensorProto.FLOAT or \
                len(init[name].dims) != 2:
            continue
        if name not in done:
            w = numpy_helper.to_array(init[name])
            trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i
                                                     for a in node.attribute)
            rows = node.op_type == "Gather" or trans_b  # output channels are rows
            scale = np.abs(w).max(axis=1 if rows else 0, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            g.initializer.extend([numpy_helper.from_array(q, name + "_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32),
                                                          name + "_scale")])
            done[name] = name + "_restored"
            restore += [helper.make_node("Cast", [name + "_int8"], [name + "_float"],
                                         name=name + "_Cast", to=onnx.TensorProto.FLOAT),
                        helper.make_node("Mul", [name + "_float", name + "_scale"],
                                         [done[name]], name=name + "_Mul")]
        node.input[i] = done[name]
    for name in done:
        g.initializer.remove(init[name])
    for n in reversed(restore):
        g.node.insert(0, n)
    onnx.save(model, str(dst))
    return dst


def _join(encoder: bytes, head: Path, out: Path, meta: dict, precision: str) -> Path:
    """The encoder graph, unchanged, feeding the head graph: one model, inputs
    ``INPUTS``, outputs ``OUTPUTS``."""
    import onnx
    from onnx import compose

    enc, hd = onnx.load_from_string(encoder), onnx.load(str(head))
    opset = max(_opset(enc), _opset(hd))
    enc, hd = (onnx.version_converter.convert_version(m, opset) if
               _opset(m) != opset else m for m in (enc, hd))
    hd = compose.add_prefix(hd, "head/", rename_inputs=False, rename_outputs=False)
    enc.ir_version = hd.ir_version = max(enc.ir_version, hd.ir_version)
    model = compose.merge_models(enc, hd, io_map=[("features", "feat")])
    _set_meta(model, dict(meta, precision=precision, encoder="int8",
                          head="fp32" if precision == "fp32" else "int8-weights"))
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def int8_parity_warning(actor: TorchActor) -> str | None:
    """Why ``actor``'s INT8 artifact would not act like the actor, or None when it does."""
    if actor.int8_encoder is not None:
        return None
    return ("this actor learnt on the fp32 image encoder, so its INT8 artifact (the whole "
            "graph quantized) picks its greedy token on only about 25-31% of frames; pretrain "
            "it again with `vlac actor pretrain` (--encoder int8, the default) or ship fp32")


def export_artifacts(actor: TorchActor, out: Path, meta: dict,
                     samples: list[dict[str, np.ndarray]], precisions=("fp32", "int8"),
                     fp32_convs: int = KEEP_FP32_CONVS) -> dict[str, Path]:
    """``actor_{precision}.onnx`` in ``out`` for each of ``precisions`` (see the module
    docstring for what each holds)."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    enc = actor.int8_encoder
    if enc is None:
        fp32 = export_fp32(actor, out / "actor_fp32.onnx", meta, samples[0])
        if "fp32" in precisions:
            paths["fp32"] = fp32
        if "int8" in precisions:
            paths["int8"] = quantize_int8(fp32, out / "actor_int8.onnx", samples, meta,
                                          fp32_convs)
        if "fp32" not in precisions:
            fp32.unlink()
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        head = _head(actor, Path(tmp) / "head.onnx", samples[0])
        if "fp32" in precisions:
            paths["fp32"] = _join(enc.onnx, head, out / "actor_fp32.onnx", meta, "fp32")
        if "int8" in precisions:
            q = _int8_weights(head, Path(tmp) / "head_int8.onnx")
            paths["int8"] = _join(enc.onnx, q, out / "actor_int8.onnx", meta, "int8")
    return paths


def _set_meta(model, meta: dict) -> None:
    del model.metadata_props[:]
    p = model.metadata_props.add()
    p.key, p.value = "vlac", json.dumps(meta)


def quantize_int8(fp32: Path, out: Path, samples: list[dict[str, np.ndarray]],
                  meta: dict, fp32_convs: int = KEEP_FP32_CONVS) -> Path:
    """Static INT8 QDQ of a whole fp32 actor graph (actors without an INT8 encoder)."""
    import onnx

    quantize_qdq(fp32, out, Feeds(samples), ["Conv", "MatMul", "Gemm"], fp32_convs)
    model = onnx.load(str(out))
    _set_meta(model, dict(meta, precision="int8"))
    onnx.save(model, str(out))
    return out


def calibration_samples(actor: TorchActor, store_root: Path | str, tasks: list[str], n: int,
                        seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Frames, proprio and sentences from stored demonstrations of the tasks."""
    store = open_episode_store(store_root, read_only=True)  # ingest may write beside us
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


class ActorPublisher:
    """The learner's publish hook: export a TorchActor (INT8 unless the publisher's
    ``precision`` is fp32) and upload it as a new version through a fleet ``Publisher``.
    Calibration samples are drawn once and reused for every later version."""

    def __init__(self, publisher, store_root: Path | str, tasks: list[str],
                 calibration_frames: int = 64) -> None:
        self.publisher, self.store_root, self.tasks = publisher, store_location(store_root), tasks
        self.calibration_frames = calibration_frames
        self.samples: list[dict[str, np.ndarray]] | None = None

    def publish(self, actor: TorchActor, version: int):
        precision = self.publisher.cfg.precision
        if hasattr(actor, "processor"):  # a TransformersActor (the learner's --actor.type hf)
            return self._publish_transformers(actor, version, precision)
        if self.samples is None:
            warning = int8_parity_warning(actor) if precision == "int8" else None
            if warning:
                log.warning("publishing INT8: %s (--publisher.precision fp32)", warning)
            self.samples = calibration_samples(actor, self.store_root, self.tasks,
                                               self.calibration_frames)
        sentences = sorted({s for t in self.tasks for s in task_text.instructions(t)})
        actor.version = version
        meta = metadata(actor, sentences, version, self.samples[0]["image"].shape[1:])
        with tempfile.TemporaryDirectory(prefix="vlac-publish-") as tmp:
            path = export_artifacts(actor, Path(tmp), meta, self.samples,
                                    (precision,))[precision]
            return self.publisher.upload(path, version, meta=dict(meta, precision=precision))

    def _publish_transformers(self, actor, version: int, precision: str):
        from vlac.cloud.actor.hf_export import export_hf_actor, prompt_samples

        if self.samples is None:
            self.samples = prompt_samples(actor, self.store_root, self.tasks,
                                          min(self.calibration_frames, 8))
        actor.version = version
        with tempfile.TemporaryDirectory(prefix="vlac-publish-") as tmp:
            path = export_hf_actor(actor, Path(tmp), self.samples, version=version,
                                   precisions=(precision,))[precision]
            return self.publisher.upload(path, version)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_transformers(cfg: ActorExportConfig) -> dict:
    """``vlac actor export`` of a transformers actor's checkpoint folder."""
    from vlac.cloud.actor.hf_export import export_hf_actor, prompt_samples
    from vlac.cloud.models.hf_actor import TransformersActor

    actor = TransformersActor(cfg.actor, cfg.low, cfg.high, camera=cfg.camera,
                              version=cfg.version, proprio_dim=cfg.proprio_dim,
                              images_kwargs={"crop_to_patches": False})
    samples = prompt_samples(actor, cfg.store_root, cfg.tasks, min(cfg.calibration_frames, 16))
    paths = export_hf_actor(actor, cfg.out, samples, version=cfg.version,
                            length=cfg.prompt_length)
    result = {k: str(v) for k, v in paths.items()}
    for k, v in paths.items():
        result[f"{k}_bytes"], result[f"{k}_sha256"] = os.path.getsize(v), sha256(v)
    print(f"exported {paths['fp32']} ({result['fp32_bytes'] / 1e6:.1f} MB) and "
          f"{paths['int8']} ({result['int8_bytes'] / 1e6:.1f} MB)", flush=True)
    return result


def main(cfg: ActorExportConfig) -> dict:
    print(describe(cfg), flush=True)
    if cfg.actor.is_dir():
        return export_transformers(cfg)
    actor = TorchActor.load(cfg.actor, image_encoder=ImageEncoder())
    actor.version = cfg.version
    sentences = sorted({s for t in cfg.tasks for s in task_text.instructions(t)})
    samples = calibration_samples(actor, cfg.store_root, cfg.tasks, cfg.calibration_frames)
    meta = metadata(actor, sentences, cfg.version, samples[0]["image"].shape[1:])
    paths = export_artifacts(actor, cfg.out, meta, samples, fp32_convs=cfg.fp32_convs)
    fp32, int8 = paths["fp32"], paths["int8"]
    (cfg.out / "actor.json").write_text(json.dumps(meta))
    result = {"fp32": str(fp32), "int8": str(int8),
              "fp32_bytes": os.path.getsize(fp32), "int8_bytes": os.path.getsize(int8),
              "fp32_sha256": sha256(fp32), "int8_sha256": sha256(int8)}
    print(f"exported {fp32} ({result['fp32_bytes'] / 1e6:.1f} MB) and {int8} "
          f"({result['int8_bytes'] / 1e6:.1f} MB)", flush=True)
    return result

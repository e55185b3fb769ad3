"""A transformers actor (``hf_actor.TransformersActor``) as one ONNX graph for the robot.

    inputs   input_ids int64 (1, L), attention_mask int64 (1, L) (left-padded to the fixed
             prompt length L), pixel_values float32 (1, 3, h, w), gumbel float32 (1, A, 256)
             (zeros: greedy), temperature float32 (1,)
    outputs  tokens int64 (1, A), logprobs float32 (1, A), value float32 (1,)

Inside: the model's prefill over the prompt (the image encoded by its own vision tower), the
value head on the last prompt position, and the decode over the A action dimensions with the
model's KV cache, each step restricted to the 256 action tokens, divided by the temperature
and sampled by Gumbel-max, as ``TransformersActor.act`` does. The shapes are static (one
prompt length, one image size), which is what TensorRT and the tracer want; the robot pads
its prompt to L.

The robot builds the inputs with ``vlac.shared.hf_prompt.HFPrompt`` (the tokenizer by the
``tokenizers`` library, the image by Pillow and numpy; no torch, no transformers) from the
``prompt`` spec in the metadata. The export checks that spec against the real processor on
sample observations and refuses a checkpoint whose processor it does not reproduce exactly.
Any task sentence can be prompted (the tokenizer goes to the robot), within L tokens.

``actor_int8.onnx`` stores the weight matrices as INT8 with per-channel scales
(``export._int8_weights``), a quarter of the bytes; activations stay float.

A graph over 2 GB (a 2B actor in fp32) needs ONNX's external data: not built here (the tiny
checkpoint is what the tests export).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vlac.cloud.models.hf_critic import position_ids
from vlac.shared.hf_prompt import HFPrompt

INPUTS = ("input_ids", "attention_mask", "pixel_values", "gumbel", "temperature")
OUTPUTS = ("tokens", "logprobs", "value")


class HFActorGraph(nn.Module):
    """The decode of ``TransformersActor.act`` (KV cache, Gumbel-max) as a traceable module."""

    def __init__(self, actor) -> None:
        super().__init__()
        self.model, self.value_head = actor.model, actor.value_head
        self.register_buffer("action_ids", actor.action_ids.clone())
        self.action_dim = actor.action_dim

    def forward(self, input_ids, attention_mask, pixel_values, gumbel, temperature):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         pixel_values=pixel_values, position_ids=position_ids(attention_mask),
                         use_cache=True, output_hidden_states=True, logits_to_keep=1)
        value = self.value_head(out.hidden_states[-1][:, -1].float()).squeeze(-1)
        cache, mask = out.past_key_values, attention_mask
        logits = out.logits[:, -1].float()
        tokens, logps = [], []
        for k in range(self.action_dim):
            restricted = logits[:, self.action_ids] / temperature[:, None]
            token = torch.argmax(restricted + gumbel[:, k], -1)
            logp = torch.log_softmax(restricted, -1)
            tokens.append(token)
            logps.append(torch.gather(logp, 1, token[:, None])[:, 0])
            if k == self.action_dim - 1:
                break
            nxt = self.action_ids[token][:, None]
            mask = torch.cat([mask, torch.ones_like(nxt)], 1)
            out = self.model(input_ids=nxt, attention_mask=mask,
                             position_ids=position_ids(mask)[:, -1:], past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
            cache, logits = out.past_key_values, out.logits[:, -1].float()
        return torch.stack(tokens, 1), torch.stack(logps, 1), value


# ---------------------------------------------------------------------- the robot's prompt
def prompt_spec(actor, length: int) -> dict:
    """What ``HFPrompt`` needs to rebuild the processor's inputs (see the module docstring)."""
    from vlac.cloud.models.hf_actor import actor_prompt_template

    proc = actor.processor
    for attr in ("image_token", "start_image_token", "end_image_token", "image_seq_length"):
        if not hasattr(proc, attr):
            raise ValueError(f"{type(proc).__name__} has no {attr}: the export rebuilds "
                             "InternVL's processor on the robot, and no other yet")
    ip = proc.image_processor
    if getattr(ip, "crop_to_patches", False) and (actor.images_kwargs or {}).get(
            "crop_to_patches", True):
        raise ValueError("the export takes one tile per frame: load the actor with "
                         "images_kwargs={'crop_to_patches': False}")
    image = (proc.start_image_token + proc.image_token * proc.image_seq_length
             + proc.end_image_token)
    template = actor_prompt_template(proc).replace(proc.image_token, image, 1)
    tok = proc.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return {"template": template, "length": int(length), "pad_id": int(pad),
            "tokenizer": tok.backend_tokenizer.to_str(),
            "image": {"height": int(ip.size.height), "width": int(ip.size.width),
                      "resample": int(ip.resample), "rescale": float(ip.rescale_factor),
                      "mean": [float(x) for x in ip.image_mean],
                      "std": [float(x) for x in ip.image_std]}}


def check_prompt(actor, prompt: HFPrompt, samples: list[tuple[np.ndarray, np.ndarray, str]]
                 ) -> None:
    """The robot's inputs equal the processor's on ``samples`` (image, proprio, task)."""
    for image, proprio, task in samples:
        enc = actor.build_inputs(image[None], proprio[None], [task])
        ids, mask = prompt.token_ids(task, proprio)
        n = int(enc["attention_mask"].sum())
        if ids[0, -n:].tolist() != enc["input_ids"][0, -n:].tolist() or mask.sum() != n:
            raise ValueError(f"the robot's tokenization of the prompt for {task!r} differs "
                             "from the processor's: this tokenizer cannot be exported yet")
        pixels = prompt.pixels(image)
        ref = enc["pixel_values"].float().numpy()
        if pixels.shape != ref.shape or not np.allclose(pixels, ref, atol=1e-4):
            raise ValueError("the robot's image preprocessing differs from the processor's "
                             f"(shape {pixels.shape} vs {ref.shape}): this image processor "
                             "cannot be exported yet")


def prompt_samples(actor, store_root, tasks: list[str], n: int, seed: int = 0
                   ) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Up to ``n`` (frame, proprio, sentence) of stored episodes of ``tasks``: the export's
    example inputs and the check of the robot's prompt."""
    from vlac.cloud.store.location import open_episode_store

    store = open_episode_store(store_root, read_only=True)
    eps = [e for e in store.list_episodes() if (e.get("task_id") or e["task"]) in tasks]
    if not eps:
        raise ValueError(f"no episodes of {tasks} in {store_root} to export with; collect "
                         "demonstrations first")
    rng, out = np.random.default_rng(seed), []
    for e in eps[:n]:
        ep = store.load_episode(e["robot_id"], e["episode_id"])
        t = int(rng.integers(len(ep)))
        out.append((ep.steps.images[actor.camera][t], ep.steps.proprio[t], ep.task))
    return out


# ---------------------------------------------------------------------- export
@contextmanager
def _traceable(model):
    """Eager attention and transformers' runtime checks off while tracing (the checks are
    ``torch._check``s the ONNX exporter cannot translate; the shapes are static anyway)."""
    before = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
    impl = model.config._attn_implementation
    os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(impl)
        if before is None:
            os.environ.pop("TRANSFORMERS_DISABLE_TORCH_CHECK")
        else:
            os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = before


def metadata(actor, version: int, image_shape: tuple[int, ...], length: int,
             tasks: list[str]) -> dict:
    return {"format": "vlac-actor-onnx", "format_version": 1, "kind": "transformers",
            "policy_version": version, "tasks": sorted(set(tasks)),
            "inputs": list(INPUTS), "outputs": list(OUTPUTS),
            "action_tokenizer": actor.tokenizer.spec(),
            "observation": {"camera": actor.camera, "image_shape": list(image_shape),
                            "proprio_dim": actor.proprio_dim},
            "action_dim": actor.action_dim, "action_bins": len(actor.action_ids),
            "prompt": prompt_spec(actor, length)}


def export_hf_actor(actor, out: Path, samples: list[tuple[np.ndarray, np.ndarray, str]], *,
                    version: int = 0, length: int = 0, precisions=("fp32", "int8")
                    ) -> dict[str, Path]:
    """``actor_{precision}.onnx`` in ``out``. ``samples`` (frame, proprio, task) check the
    robot's prompt and give the example inputs; ``length`` is the fixed prompt length (0:
    the longest sample's plus 16 tokens)."""
    import onnx

    from vlac.cloud.actor.export import _int8_weights, _set_meta

    if not samples:
        raise ValueError("give at least one (frame, proprio, task) sample")
    image_shape = tuple(np.asarray(samples[0][0]).shape)
    if not length:
        lengths = [int(actor.build_inputs(i[None], p[None], [t])["attention_mask"].sum())
                   for i, p, t in samples]
        length = max(lengths) + 16
    meta = metadata(actor, version, image_shape, length, [t for _, _, t in samples])
    prompt = HFPrompt(meta["prompt"])
    check_prompt(actor, prompt, samples)
    image, proprio, task = samples[0]
    feeds = prompt.feeds(image, proprio, task)
    args = (*(torch.from_numpy(feeds[k]) for k in INPUTS[:3]),
            torch.zeros(1, actor.action_dim, meta["action_bins"]), torch.ones(1))
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as tmp, _traceable(actor.model), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = Path(tmp) / "actor_fp32.onnx"
        torch.onnx.export(HFActorGraph(actor).eval(), args, str(fp32),
                          input_names=list(INPUTS), output_names=list(OUTPUTS), dynamo=True,
                          external_data=False, verbose=False)
        built = {"fp32": fp32}
        if "int8" in precisions:
            built["int8"] = _int8_weights(fp32, Path(tmp) / "actor_int8.onnx")
        for precision in precisions:
            model = onnx.load(str(built[precision]))
            _set_meta(model, dict(meta, precision=precision))
            onnx.save(model, str(out / f"actor_{precision}.onnx"))
            paths[precision] = out / f"actor_{precision}.onnx"
    return paths

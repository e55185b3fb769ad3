"""Runs in vLLM's own venv (``infra/vllm/install.sh``), driven by test_vllm_critic.py:

    .cache/vllm-venv/bin/python tests/cloud/models/vllm_parity.py OUT.json

Builds a tiny random InternVL critic checkpoint (``vlac.cloud.models.tiny``: head size 32,
which vLLM's CPU attention takes; its critic tokens sharpened so that their distributions are
far from uniform, where any two decoders would agree), and scores the same pairs with
``TransformersCritic`` and the vLLM backend of the reward service: single pairs, a batch, a
whole episode, with reference frames, and through the service's real socket. Writes what it
measured as JSON; the assertions are the pytest side's.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np

IMAGE = 32  # px; patch 8 -> 4x4 patches -> pixel shuffle 0.5 -> 4 tokens per image
NO_TILES = {"crop_to_patches": False}
TASKS = ["push the red button", "open the drawer on the left side of the table slowly",
         "reach the goal"]


def frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def compare(hf, vl, tasks, a, b, ref=None) -> dict:
    enc = hf.build_inputs(tasks, a, b, ref)
    hf_ids = [row[m.bool()].tolist()
              for row, m in zip(enc["input_ids"], enc["attention_mask"], strict=True)]
    vl_ids = vl.prompt_token_ids(tasks, a, b, ref)
    h = hf.critique_output(tasks, a, b, ref)
    v = vl.critique_output(tasks, a, b, ref)
    hp = h.progress_logits.double().log_softmax(-1).numpy()
    vp = v.progress_logits.double().numpy()
    return {"n": len(tasks), "prompt_ids_equal": hf_ids == vl_ids,
            "delta_max_abs": float(np.abs(h.delta.numpy() - v.delta.numpy()).max()),
            "done_max_abs": float(np.abs(h.done_prob.numpy() - v.done_prob.numpy()).max()),
            "progress_logprob_max_abs": float(np.abs(np.exp(hp) - np.exp(vp)).max()),
            "tokens_equal": bool((h.progress_token.numpy() == v.progress_token.numpy()).all()),
            "delta_spread": float(h.delta.std()) if len(tasks) > 1 else 0.0,
            "done_spread": float(h.done_prob.std()) if len(tasks) > 1 else 0.0,
            "max_prob": float(np.exp(hp).max(-1).mean())}


def served(vl, frames_: np.ndarray) -> dict:
    """One episode through the reward service's real ROUTER/DEALER sockets."""
    import threading

    from vlac.cloud.critic.service import RewardClient, RewardServer

    server = RewardServer(vl, "tcp://127.0.0.1:0")
    th = threading.Thread(target=server.serve, daemon=True)
    th.start()
    client = RewardClient(server.wait_ready(120), timeout_s=120)
    delta, done = client.episode_rewards(TASKS[0], frames_, from_first=True)
    try:
        client.episode_rewards(TASKS[0], frames_[:1])
        refused = ""
    except ValueError as e:
        refused = str(e)
    client.close()
    server.stop()
    th.join(10)
    direct = vl.episode_rewards(TASKS[0], frames_, from_first=True)
    return {"delta_max_abs": float(np.abs(delta - direct[0]).max()),
            "done_max_abs": float(np.abs(done - direct[1]).max()), "refused": refused}


def main() -> None:
    out = Path(sys.argv[1])
    from vlac.cloud.critic.service import RewardServiceConfig, load_critic
    from vlac.cloud.models.hf_critic import TransformersCritic
    from vlac.cloud.models.tiny import tiny_internvl_critic

    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ck = tiny_internvl_critic(Path(tmp) / "critic", image=IMAGE)
        hf = TransformersCritic(ck, batch_size=4, images_kwargs=NO_TILES)
        t0 = time.monotonic()
        # as `vlac critic serve --backend vllm` builds it
        vl = load_critic(RewardServiceConfig(critic=ck, backend="vllm", image_tiles=False,
                                             max_reference_frames=3, max_model_len=1024,
                                             kv_cache_mib=256))
        result["backend"] = type(vl).__name__
        result["engine_start_s"] = time.monotonic() - t0
        a, b = frames(6, 1), frames(6, 2)
        tasks = [TASKS[i % 3] for i in range(6)]
        result["single"] = compare(hf, vl, tasks[:1], a[:1], b[:1])
        result["batch"] = compare(hf, vl, tasks, a, b)
        result["reference"] = compare(hf, vl, tasks[:3], a[:3], b[:3], frames(3, 3))
        ep = frames(9, 4)
        h = hf.episode_rewards(TASKS[1], ep, stride=2)
        v = vl.episode_rewards(TASKS[1], ep, stride=2)
        result["episode"] = {"n": len(h[0]),
                             "delta_max_abs": float(np.abs(h[0] - v[0]).max()),
                             "done_max_abs": float(np.abs(h[1] - v[1]).max())}
        try:
            vl.critique(TASKS[:1], a[:1], b[:1], frames(4, 5))
            result["too_many_reference"] = ""
        except ValueError as e:
            result["too_many_reference"] = str(e)
        result["served"] = served(vl, ep)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

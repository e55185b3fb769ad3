"""The transformers and vLLM half of critic_serving.py, run in vLLM's venv:

    .cache/vllm-venv/bin/python benchmarks/critic_serving_hf.py FRAMES.npy OUT.json SINGLES REPEATS

Both critics score the same frames with the same tiny random InternVL checkpoint (one tile
per frame, 32 px); writes {"transformers": {...}, "vllm": {...}} in pairs/s.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from critic_serving import timed


def main() -> None:
    frames_path, out, singles, repeats = sys.argv[1:5]
    frames = np.load(frames_path)
    from vlac.cloud.critic.service import RewardServiceConfig, load_critic
    from vlac.cloud.models.tiny import tiny_internvl_critic

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        ck = tiny_internvl_critic(Path(tmp) / "critic")
        for backend in ("transformers", "vllm"):
            critic = load_critic(RewardServiceConfig(critic=ck, backend=backend,
                                                     image_tiles=False, kv_cache_mib=256,
                                                     max_model_len=1024))
            rows[backend] = timed(critic, frames, int(singles), int(repeats))
            del critic
    Path(out).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()

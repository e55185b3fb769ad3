"""VLLMCritic against TransformersCritic on the same tiny random InternVL checkpoint, in
vLLM's own venv (``infra/vllm/install.sh``; the README's test command installs it). The
scoring runs there as a script (``vllm_parity.py``) because vLLM pins another torch and
transformers than this environment's; this side checks what it measured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("VLAC_VLLM_VENV", ROOT / ".cache" / "vllm-venv"))
VENV_PYTHON = VENV / "bin" / "python"
TOLERANCE = 1e-3  # the parity bar; fp32 on CPU lands near 1e-6


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    if not VENV_PYTHON.exists():
        pytest.skip(f"no vLLM venv at {VENV_PYTHON.parent.parent}: run infra/vllm/install.sh "
                    "(or point VLAC_VLLM_VENV at one)")
    out = tmp_path_factory.mktemp("vllm") / "parity.json"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([str(VENV_PYTHON), str(Path(__file__).with_name("vllm_parity.py")),
                           str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(1000)
@pytest.mark.parametrize("case", ["single", "batch", "reference"])
def test_vllm_decode_matches_transformers(parity, case):
    r = parity[case]
    assert r["prompt_ids_equal"], "vLLM tokenized the prompt differently"
    assert r["tokens_equal"], "different argmax progress tokens"
    assert r["delta_max_abs"] < TOLERANCE and r["done_max_abs"] < TOLERANCE, r
    assert r["progress_logprob_max_abs"] < TOLERANCE, r
    # the distributions compared are far from uniform (1/201) and differ between pairs
    assert r["max_prob"] > 0.1, r
    if r["n"] > 1:
        assert r["delta_spread"] > 0.005, r


def test_the_compared_done_probabilities_vary(parity):
    assert max(parity[c]["done_spread"] for c in ("batch", "reference")) > 0.05, parity


@pytest.mark.timeout(1000)
def test_vllm_episode_rewards_and_the_reward_service(parity):
    assert parity["backend"] == "VLLMCritic"
    ep = parity["episode"]
    assert ep["n"] == 8 and ep["delta_max_abs"] < TOLERANCE and ep["done_max_abs"] < TOLERANCE
    served = parity["served"]
    assert served["delta_max_abs"] == 0.0 and served["done_max_abs"] == 0.0
    assert "at least 2 frames" in served["refused"]
    assert "at most 3" in parity["too_many_reference"]


def test_building_a_vllm_critic_without_vllm_names_the_install_script(tmp_path):
    pytest.importorskip("torch")
    if subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True).returncode == 0:
        pytest.skip("vLLM is installed in this environment")
    from vlac.cloud.models.vllm_critic import VLLMCritic

    with pytest.raises(ImportError, match=r"infra/vllm/install\.sh"):
        VLLMCritic(tmp_path)

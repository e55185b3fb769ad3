"""benchmarks/critic_serving.py end to end on a tiny budget: the three backends score the
same frames and the key line names what it measured. Needs vLLM's venv (infra/vllm/install.sh;
the README's test command installs it)."""

import re

import critic_serving
import pytest

from tests.cloud.models.test_vllm_critic import VENV


@pytest.mark.timeout(900)
def test_a_tiny_run_reports_all_three_critics(tmp_path, capsys):
    if not (VENV / "bin" / "python").exists():
        pytest.skip(f"no vLLM venv at {VENV}: run infra/vllm/install.sh")
    rows = critic_serving.main(["--frames", "6", "--singles", "2", "--repeats", "1",
                                "--vllm-venv", str(VENV), "--out", str(tmp_path)])
    assert set(rows) == {"small", "transformers", "vllm"}
    assert all(r["batch_1"] > 0 and r["episode"] > 0 for r in rows.values())
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"vllm_pairs_per_s=[\d.]+ transformers_pairs_per_s=[\d.]+ "
                        r"small_pairs_per_s=[\d.]+ vllm_vs_transformers=[\d.]+", line), line
    assert (tmp_path / "critic_serving.png").exists()

"""benchmarks/hf_actor_edge.py end to end on a tiny budget: the torch actor and both exported
graphs act on the same observations, and the key line names what it measured."""

import re

import hf_actor_edge
import pytest


@pytest.mark.timeout(600)
def test_a_tiny_run_compares_torch_and_both_graphs(tmp_path, capsys):
    rows = hf_actor_edge.main(["--observations", "4", "--repeats", "1", "--out", str(tmp_path)])
    assert set(rows) == {"torch", "onnx fp32", "onnx int8"}
    assert rows["onnx fp32"]["agreement"] == 1.0 and rows["onnx fp32"]["logp_gap"] < 1e-3
    assert rows["onnx int8"]["mb"] < rows["onnx fp32"]["mb"] / 2
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"hf_onnx_fp32_agreement=[\d.]+ hf_onnx_int8_agreement=[\d.]+ "
                        r"hf_onnx_int8_ms=[\d.]+ hf_torch_ms=[\d.]+ hf_onnx_vs_torch=[\d.]+",
                        line), line
    assert (tmp_path / "hf_actor_edge.png").exists()

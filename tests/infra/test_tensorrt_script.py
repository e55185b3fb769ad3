import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "tensorrt" / "build_engine.py"


def test_says_clearly_when_tensorrt_is_absent(tmp_path):
    onnx = tmp_path / "a.onnx"
    onnx.write_bytes(b"x")
    r = subprocess.run([sys.executable, str(SCRIPT), str(onnx), str(tmp_path / "a.plan")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "TensorRT is not installed on this machine" in r.stderr
    assert "trtexec --onnx=" in r.stderr and "--int8" in r.stderr
    assert not (tmp_path / "a.plan").exists()


def test_missing_onnx_file(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "no.onnx"),
                        str(tmp_path / "a.plan")], capture_output=True, text=True)
    assert r.returncode == 2 and "vlac actor export" in r.stderr

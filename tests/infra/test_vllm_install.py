"""infra/vllm/guard_torchvision.py on a file laid out as torchvision 0.28's
``_meta_registrations.py`` (the real one is guarded by infra/vllm/install.sh in vLLM's venv)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("guard_torchvision",
                                              ROOT / "infra/vllm/guard_torchvision.py")
guard_torchvision = importlib.util.module_from_spec(spec)
spec.loader.exec_module(guard_torchvision)

ORIGINAL = '''import functools

import torch
import torch.library


@torch.library.register_fake("torchvision::nms")
def meta_nms(dets, scores, iou_threshold):
    return dets


@torch.library.register_fake("torchvision::qnms")
def meta_qnms(dets, scores, iou_threshold):
    return dets


@torch.library.register_fake("torchvision::roi_align")
def meta_roi_align(x):
    return x
'''


def test_guard_wraps_exactly_the_two_registrations_and_is_idempotent(tmp_path):
    f = tmp_path / "_meta_registrations.py"
    f.write_text(ORIGINAL)
    assert guard_torchvision.guard(f) == "guarded"
    text = f.read_text()
    assert '@_vlac_guard("torchvision::nms")' in text
    assert '@_vlac_guard("torchvision::qnms")' in text
    assert '@torch.library.register_fake("torchvision::roi_align")' in text  # untouched
    assert text.index("def _vlac_guard") < text.index('@_vlac_guard("torchvision::nms")')
    compile(text, str(f), "exec")
    assert guard_torchvision.guard(f) == "already guarded"
    assert f.read_text() == text


def test_guard_refuses_a_file_it_does_not_recognise(tmp_path):
    f = tmp_path / "_meta_registrations.py"
    f.write_text(ORIGINAL.replace('"torchvision::qnms"', '"torchvision::other"'))
    with pytest.raises(ValueError, match=r"not where torchvision 0\.28 has them"):
        guard_torchvision.guard(f)

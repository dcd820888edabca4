# syntax=docker/dockerfile:1
# lungstream-infer: lobe bundles from ct.lobes.v1 through both networks (libtorch through
# tch), results to ct.results.v1. CUDA build; without a GPU it runs on the CPU with
# `device = "cpu"` (or `auto`).
#
#   docker build -f docker/infer.Dockerfile -t lungstream/infer:0.1.0 .
#
# Run from the repository root; .dockerignore keeps target/ and .cache/ out of the context.
#
# libtorch comes from PyPI's torch==2.13.0 wheel, the version tch 0.26 binds (Cargo.toml
# pins them together), installed with its CUDA 13.0 libraries (nvidia-* wheels) as
# `scripts/setup.sh --torch-full` does. The runtime stage copies that site-packages
# folder to the same path, because the binary finds libtorch through the run-time path
# set at link time (services/infer/build.rs), and libtorch_cuda finds the nvidia-*
# libraries through its own relative run-time paths.
ARG RUST_IMAGE=rust:1.95-bookworm
# CUDA 13.0, the CUDA of the torch 2.13.0 wheels on PyPI; it needs NVIDIA driver 580 or
# newer on the nodes.
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04

FROM ${RUST_IMAGE} AS build
# CMake builds CharLS (JPEG-LS); scripts/setup.sh installs the same version from PyPI.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/tools \
    && /opt/tools/bin/pip install --no-cache-dir cmake==4.4.5
# The full torch wheel with its CUDA dependencies: about 2.7 GB to download.
RUN python3 -m venv /opt/torch \
    && /opt/torch/bin/pip install --no-cache-dir torch==2.13.0
ENV PATH=/opt/tools/bin:$PATH \
    CARGO_TERM_PROGRESS_WHEN=never \
    LIBTORCH=/opt/torch/lib/python3.11/site-packages/torch
WORKDIR /src
COPY . .
# `cuda` links libtorch_cuda, so libtorch finds the CUDA device at run time.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=lungstream-target-infer \
    cargo build --release --locked -p lungstream-infer-worker --features cuda \
    && install -m 0755 target/release/lungstream-infer /usr/local/bin/

FROM ${CUDA_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3t64 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 lungstream \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin lungstream
# The same path as in the build stage (see the top of this file). Python itself is not
# needed: only torch's and the nvidia-* wheels' shared libraries are loaded.
COPY --from=build /opt/torch/lib/python3.11/site-packages /opt/torch/lib/python3.11/site-packages
COPY --from=build /usr/local/bin/lungstream-infer /usr/local/bin/
# The CUDA kernel cache goes to the writable /tmp (the chart mounts an emptyDir there).
ENV CUDA_CACHE_PATH=/tmp/cuda-cache
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["lungstream-infer"]

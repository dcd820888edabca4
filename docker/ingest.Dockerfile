# syntax=docker/dockerfile:1
# lungstream-ingest: STOW-RS and C-STORE intake (`--role intake`) and the series assembler
# (`--role assembler`); the chart runs both Deployments from this image.
#
#   docker build -f docker/ingest.Dockerfile -t lungstream/ingest:0.1.0 .
#
# Run from the repository root; .dockerignore keeps target/ and .cache/ out of the context.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# CMake builds CharLS (JPEG-LS); scripts/setup.sh installs the same version from PyPI.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/tools \
    && /opt/tools/bin/pip install --no-cache-dir cmake==4.4.5
ENV PATH=/opt/tools/bin:$PATH CARGO_TERM_PROGRESS_WHEN=never
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=lungstream-target-ingest \
    cargo build --release --locked -p lungstream-ingest \
    && install -m 0755 target/release/lungstream-ingest /usr/local/bin/

FROM ${RUNTIME_IMAGE}
# ca-certificates: S3 over HTTPS verifies against the system's CA store.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 lungstream \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin lungstream
COPY --from=build /usr/local/bin/lungstream-ingest /usr/local/bin/
USER 10001:10001
EXPOSE 8080 11112
ENTRYPOINT ["lungstream-ingest"]

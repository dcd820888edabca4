#!/usr/bin/env bash
# Installs the project's build and benchmark tools into .cache/ (ignored by git), so a
# fresh Debian machine with a Rust toolchain and Python 3 can build and test lungstream.
# Safe to run again: it does nothing when everything is already there.
#
#   .cache/venv        CMake, which builds CharLS (the JPEG-LS codec). libtorch for tch,
#                      from PyPI's torch wheel without its CUDA dependencies: Python
#                      cannot import this torch, only its C++ libraries are used.
#                      pydicom, numpy, scipy and scikit-learn, the reference
#                      implementations the benchmarks compare against.
#   .cache/pip         pip's download cache, so a rebuilt venv needs no network
#
# `scripts/setup.sh --torch-full` also creates .cache/torch-full: the complete torch
# install (about 2.7 GB to download, 4.7 GB on disk). The PyTorch reference of
# `lungstream bench infer` runs in it, and CUDA builds link against it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$root/.cache"
venv="$cache/venv"
stamp="$venv/.lungstream-setup-v3"

# Pinned so that every machine builds and benchmarks against the same tools.
python_packages=(cmake==4.4.5 pydicom==3.0.2 numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1)
# torch 2.13.0 is the libtorch that tch 0.26 binds (Cargo.toml pins them together). Its CPU
# library still links the CUDA runtime and CUPTI, hence the two small wheels.
torch_cpu=(torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
pip_flags=(--quiet --cache-dir "$cache/pip" --disable-pip-version-check)

if [[ "${1:-}" == "--torch-full" ]]; then
    full="$cache/torch-full"
    if [[ ! -f "$full/.lungstream-torch-full-v1" ]]; then
        echo "setup: creating $full with torch==2.13.0 and its CUDA libraries" >&2
        rm -rf "$full"
        python3 -m venv "$full"
        "$full/bin/pip" install "${pip_flags[@]}" torch==2.13.0 numpy==2.4.6 safetensors==0.7.0
        touch "$full/.lungstream-torch-full-v1"
    fi
    shift
fi

# librdkafka is built with the system's OpenSSL, for Kafka over TLS and SASL/SCRAM.
if ! pkg-config --exists openssl 2>/dev/null; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing libssl-dev and pkg-config for librdkafka's TLS" >&2
        apt-get install -y -qq libssl-dev pkg-config >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null; }
    else
        echo "setup: OpenSSL's development files are missing; the build will fail (Debian: apt-get install libssl-dev pkg-config)" >&2
    fi
fi

# The browser tests of the report pages drive Debian's Chromium through ChromeDriver.
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "setup: installing chromium and chromium-driver for the browser tests" >&2
        apt-get install -y -qq chromium chromium-driver >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }
    else
        echo "setup: chromium and chromium-driver are missing; the browser tests of the report pages will fail (Debian: apt-get install chromium chromium-driver)" >&2
    fi
fi

if [[ -f "$stamp" ]]; then
    exit 0
fi

mkdir -p "$cache"
if ! command -v python3 >/dev/null; then
    echo "setup: python3 is missing; install it (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "setup: cargo is missing; install a Rust toolchain (rustup) first" >&2
    exit 1
fi
if ! command -v c++ >/dev/null; then
    echo "setup: a C++ compiler is missing; install it (Debian: apt-get install g++)" >&2
    exit 1
fi

echo "setup: creating $venv with ${python_packages[*]}" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install "${pip_flags[@]}" "${python_packages[@]}"
"$venv/bin/pip" install "${pip_flags[@]}" --no-deps "${torch_cpu[@]}"
touch "$stamp"

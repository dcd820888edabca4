#!/usr/bin/env bash
# Installs the project's build and benchmark tools into .cache/ (ignored by git), so a
# fresh Debian machine with a Rust toolchain and Python 3 can build and test lungstream.
# Safe to run again: it does nothing when everything is already there.
#
#   .cache/venv   CMake (builds CharLS, the JPEG-LS codec), pydicom, numpy, scipy and
#                 scikit-learn (the reference implementations the benchmarks compare
#                 against)
#   .cache/pip    pip's download cache, so a rebuilt venv needs no network
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$root/.cache"
venv="$cache/venv"
stamp="$venv/.lungstream-setup-v2"

# Pinned so that every machine builds and benchmarks against the same tools.
python_packages=(cmake==4.4.5 pydicom==3.0.2 numpy==2.4.6 scipy==1.17.1 scikit-learn==1.9.1)

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
"$venv/bin/pip" install --quiet --cache-dir "$cache/pip" --disable-pip-version-check \
    "${python_packages[@]}"
touch "$stamp"

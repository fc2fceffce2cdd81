#!/usr/bin/env bash
# The CUDA backend on a machine with an NVIDIA GPU: every fixture compiled by nvcc for
# this GPU and run on it against Keras, and the nvcc check for every GPU kerac compiles
# for. nvcc (CUDA 13) comes from PyPI when none is given; the GPU's driver must be
# installed. A few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
if [ -z "${KERAC_NVCC:-}" ] && ! command -v nvcc >/dev/null; then
    python3 -m venv target/cuda-tools
    target/cuda-tools/bin/pip install -q nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 nvidia-cuda-crt==13.5.37
    KERAC_NVCC="$(echo "$PWD"/target/cuda-tools/lib/python3*/site-packages/nvidia/cu13/bin/nvcc)"
    export KERAC_NVCC
fi
cargo test --release -p kerac-conformance --test object_vs_keras cuda -- --nocapture

#!/usr/bin/env bash
# The CUDA backend on a machine with an NVIDIA GPU: every fixture compiled by nvcc for
# this GPU and run on it against Keras, the nvcc check for every GPU kerac compiles for,
# and model!(..., cuda) on the GPU against the CPU and Keras. nvcc and NVRTC (CUDA 13)
# come from PyPI unless KERAC_NVCC names an nvcc (then NVRTC must be on the library
# path); the GPU's driver must be installed. A few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
if [ -z "${KERAC_NVCC:-}" ]; then
    python3 -m venv target/cuda-tools
    target/cuda-tools/bin/pip install -q nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 \
        nvidia-cuda-crt==13.5.37 nvidia-cuda-nvrtc==13.5.37
    cuda="$(echo "$PWD"/target/cuda-tools/lib/python3*/site-packages/nvidia/cu13)"
    export KERAC_NVCC="$cuda/bin/nvcc"
    export LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# The generated C++ through nvcc, and model!(..., cuda) through NVRTC and cudarc.
cargo test --release -p kerac-conformance --test object_vs_keras cuda -- --nocapture
cargo test --release -p kerac-example-cuda-classifier -- --nocapture
cargo run --release -p kerac-example-cuda-classifier

#!/usr/bin/env bash
# The CUDA backend on a machine with an NVIDIA GPU: every fixture compiled by nvcc for
# this GPU and run on it against Keras, the nvcc check for every GPU kerac compiles for,
# and model!(..., cuda) on the GPU against the CPU and Keras. nvcc and NVRTC (CUDA 13)
# come from PyPI (tests/cuda_tools.sh); the GPU's driver must be installed. A few
# minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L
source tests/cuda_tools.sh
# The generated C++ through nvcc, and model!(..., cuda) through NVRTC and cudarc.
cargo test --release -p kerac-conformance --test object_vs_keras cuda -- --nocapture
cargo test --release -p kerac-example-cuda-classifier -- --nocapture
cargo run --release -p kerac-example-cuda-classifier

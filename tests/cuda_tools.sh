# Sourced by .ci/run and tests/cuda_gpu.sh: CUDA 13's nvcc and NVRTC from PyPI (the
# `nvidia-cuda-*` wheels, which need no GPU) under target/cuda-tools, with KERAC_NVCC
# naming nvcc and LD_LIBRARY_PATH reaching libnvrtc. Nothing to do where KERAC_NVCC is
# already set (then NVRTC must be on the library path).
if [ -z "${KERAC_NVCC:-}" ]; then
    python3 -m venv target/cuda-tools
    target/cuda-tools/bin/pip install -q nvidia-cuda-nvcc==13.5.37 nvidia-cuda-runtime==13.5.37 \
        nvidia-cuda-crt==13.5.37 nvidia-cuda-nvrtc==13.5.37
    cuda="$(echo "$PWD"/target/cuda-tools/lib/python3*/site-packages/nvidia/cu13)"
    export KERAC_NVCC="$cuda/bin/nvcc"
    export LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
"$KERAC_NVCC" --version | tail -1

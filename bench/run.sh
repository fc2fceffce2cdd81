#!/usr/bin/env bash
# Times kerac against ONNX Runtime, TensorFlow Lite, tract and TensorFlow on the
# benchmark models (bench/models.txt), at batch 1 on one pinned core, and writes
#   bench/results/README.md   the tables (latency, ratios, jitter, kernel share of peak,
#                             WCET reports)
#   bench/results/latency.png the latency distributions
#   bench/results/wcet/       `kerac inspect --wcet` for every model
# Installs what it needs: Debian packages (python3-venv, valgrind) when run as root, and
# the pinned Python packages (bench/requirements.txt) in bench/.venv.
#
#   bench/run.sh [MODEL ...]      RUNS=100000 SECONDS_PER_PEER=5 CORE=<last core>
set -euo pipefail
cd "$(dirname "$0")"
RESULTS=$PWD/results
RUNS=${RUNS:-100000}
SECONDS_PER_PEER=${SECONDS_PER_PEER:-5}
CORE=${CORE:-$(($(nproc) - 1))}

need=()
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)
command -v valgrind >/dev/null || need+=(valgrind)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "bench/run.sh needs: ${need[*]} (apt install them, or run as root)" >&2
        exit 1
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q -r requirements.txt

# keras.applications models too large to commit are made with the fixtures' pinned Keras.
if grep -v '^#' models.txt | awk 'NF {print $1}' | while read -r m; do
    [ -e "../tests/fixtures/$m/k3.keras" ] || exit 1
done; then :; else
    echo "== making the keras.applications models (tests/make_applications.sh)"
    bash ../tests/make_applications.sh
fi

mkdir -p "$RESULTS/wcet"
echo "== exporting the Keras models to ONNX and TensorFlow Lite"
.venv/bin/python bench.py export "$RESULTS" "$@"

echo "== building kerac (model! and objects) and tract, as a user does: no RUSTFLAGS"
# The model! code picks the CPU's widest kernels at run time (AVX-512F, AVX2+FMA or
# SSE2); the report says which ran.
cargo build --release -q
# The kerac command for the WCET reports is built for any x86-64: Valgrind, which counts
# the instructions, does not decode every instruction a native build may use. The code
# it measures is JIT-compiled for this CPU either way.
cargo build --release -q --manifest-path ../Cargo.toml -p kerac-compiler --target-dir target/portable

echo "== timing kerac and tract on core $CORE"
taskset -c "$CORE" target/release/kerac-bench --results "$RESULTS" --runs "$RUNS" --seconds "$SECONDS_PER_PEER" "$@"

echo "== timing ONNX Runtime, TensorFlow Lite and TensorFlow on core $CORE"
taskset -c "$CORE" .venv/bin/python bench.py time "$RESULTS" --runs "$RUNS" --seconds "$SECONDS_PER_PEER" "$@"

echo "== WCET reports"
grep -v '^#' models.txt | awk 'NF {print $1}' | while read -r m; do
    if [ $# -eq 0 ] || [[ " $* " == *" $m "* ]]; then
        f=../tests/fixtures/$m/k3.keras
        [ -e "$f" ] || f=../target/applications/$m/k3.keras
        target/portable/release/kerac inspect "$f" --wcet \
            -o "$RESULTS/wcet/$m.wcet.json" >"$RESULTS/wcet/$m.txt"
    fi
done

.venv/bin/python bench.py report "$RESULTS"

#!/usr/bin/env bash
# Prints, for every committed fixture (its Keras 3 file), what the model costs on a
# Cortex-M4 compiled by `kerac compile --emit c` with arm-none-eabi-gcc -O2, as a
# Markdown table:
#   flash = the object's text + rodata (code and weights), of which `weights` are the
#           weights and `code` the rest;
#   RAM   = scratch (<PREFIX>_SCRATCH_BYTES) + .data/.bss + the deepest stack: the entry
#           point's frame plus the largest step's, from -fstack-usage.
#
#   bash examples/cortex_m4/sizes.sh [KERAC]
set -euo pipefail
cd "$(dirname "$0")/../.."
KERAC=${1:-"cargo run --release -q -p kerac-compiler --"}
CPU="-mcpu=cortex-m4 -mfpu=fpv4-sp-d16 -mfloat-abi=hard -mthumb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| model | flash | weights | code | RAM | scratch | stack |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for model in tests/fixtures/*/k3.keras; do
    name=$(basename "$(dirname "$model")")
    if ! $KERAC compile "$model" --emit c -o "$work/m.c" --header "$work/m.h" 2>/dev/null; then
        echo "$name: needs an input shape; left out" >&2
        continue
    fi
    arm-none-eabi-gcc $CPU -O2 -std=c99 -fstack-usage -c "$work/m.c" -o "$work/m.o"
    read -r text data bss _ < <(arm-none-eabi-size "$work/m.o" | tail -1)
    weights=$(sed -n 's/^static const float net_w[0-9]*\[\([0-9]*\)\].*/\1/p' "$work/m.c" |
        awk '{s += 4 * $1} END {print s + 0}')
    scratch=$(sed -n 's/^#define NET_SCRATCH_BYTES \([0-9]*\)/\1/p' "$work/m.h")
    entry=$(awk -F'\t' '$1 ~ /:net_predict$/ {print $2}' "$work/m.su")
    step=$(awk -F'\t' '$1 !~ /:net_predict$/ {if ($2 > m) m = $2} END {print m + 0}' "$work/m.su")
    stack=$((entry + step))
    ram=$((scratch + data + bss + stack))
    echo "| $name | $text | $weights | $((text - weights)) | $ram | $scratch | $stack |"
done

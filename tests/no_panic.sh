#!/usr/bin/env bash
# Builds compiled fixtures into a no_std, alloc-free static library whose panic handler
# references an undefined symbol, then links it into a C program: the link succeeds only
# if no panic path is reachable from predict / run. An explicit --target keeps the
# panic=abort flags off the proc macro, which runs on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=target/no-panic
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C panic=abort" cargo build -q --manifest-path examples/no_std_check/Cargo.toml --release --target "$triple" --target-dir "$target_dir"
lib="$target_dir/$triple/release/libkerac_no_std_check.a"
cc -O2 -o "$target_dir/no_panic_check" examples/no_std_check/main.c "$lib" -Wl,--gc-sections
"$target_dir/no_panic_check"
echo "no panic path reachable from predict: ok"

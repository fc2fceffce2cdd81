#!/usr/bin/env bash
# Builds compiled fixtures into a no_std, alloc-free static library whose panic handler
# references an undefined symbol, then links it into a C program: the link succeeds only
# if no panic path is reachable from predict / run. Done twice: with the portable kernels
# and with the machine's SIMD. An explicit --target keeps the flags off the proc macro.
set -euo pipefail
cd "$(dirname "$0")/.."
triple=$(rustc -vV | sed -n 's/^host: //p')
for simd in portable native; do
    flags="-C panic=abort"
    [ "$simd" = native ] && flags="$flags -C target-cpu=native"
    target_dir=target/no-panic-$simd
    RUSTFLAGS="$flags" cargo build -q --manifest-path examples/no_std_check/Cargo.toml --release --target "$triple" --target-dir "$target_dir"
    cc -O2 -o "$target_dir/no_panic_check" examples/no_std_check/main.c "$target_dir/$triple/release/libkerac_no_std_check.a" -Wl,--gc-sections
    "$target_dir/no_panic_check"
    echo "no panic path reachable from predict ($simd kernels): ok"
done

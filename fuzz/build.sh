#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation on the stable toolchain,
# exactly the flags `cargo fuzz build` uses minus AddressSanitizer (which needs nightly).
# `--target` keeps the instrumentation away from build scripts and proc macros.
set -euo pipefail
cd "$(dirname "$0")"
TARGET="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo build --release --target "$TARGET" --bins "$@"
echo "binaries in $(pwd)/target/$TARGET/release/"

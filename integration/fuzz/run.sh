#!/usr/bin/env bash
# Bounded fuzz smoke runs of every target, SECS seconds each (default 60), starting from the
# committed seed corpus (read-only: new inputs go to a scratch directory). Uses cargo-fuzz on
# the stable toolchain (RUSTC_BOOTSTRAP=1 lets it pass libFuzzer's flags; `-s none`: no
# sanitizer runtime is needed, Rust's own checks and debug assertions catch the faults).
#   cargo install cargo-fuzz      # once
#   integration/fuzz/run.sh [target ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${SECS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config udp_control admin proxy_header)
export RUSTC_BOOTSTRAP=1
cargo fuzz build --fuzz-dir integration/fuzz -s none
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  echo "== $t: ${secs}s"
  cargo fuzz run --fuzz-dir integration/fuzz -s none "$t" "$work" "integration/fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 2>&1 | grep -E "^#[0-9]+ *DONE|Done|ERROR|panicked|SUMMARY|artifact" || true
  rm -rf "$work"
done

#!/usr/bin/env bash
# A soak of Ballast: builds it (release), then runs examples/soak.rs for DURATION seconds
# (default 600) — new connection per request, keep-alive, bulk streams with urgent bytes
# through splice, resets, slow readers, UDP flows beside a flood of unanswered ones, reloads
# and target churn through the admin API — and checks that no stream lost or changed bytes,
# no stream ended cleanly short, UDP flows kept >= 95% of replies, descriptors and RSS came
# back within 10% of a warm baseline, and /metrics agrees with /connections.
#
#   examples/soak.sh [DURATION_SECONDS] [OUT_DIR]
#
# Everything runs on 127.0.0.1 and stops by itself; the summary is printed and written to
# OUT_DIR/summary.txt (default target/soak), Ballast's log to OUT_DIR/ballast.log.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-600}"
out="${2:-target/soak}"
ulimit -n 20000 2>/dev/null || true
cargo build --release --quiet --bin ballast
cargo build --release --quiet --example soak
exec target/release/examples/soak --ballast target/release/ballast --duration "$duration" --out "$out"

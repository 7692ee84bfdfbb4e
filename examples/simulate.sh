#!/usr/bin/env bash
# The deterministic simulation of a TCP connection (src/tcp/sim), for many more seeds than
# `cargo test` runs: each seed is a whole connection's life over simulated sockets, checked
# after every step. A failure prints its seed and how to replay it.
#
#   examples/simulate.sh [SEEDS] [FROM]     # default: 200000 seeds from a random start
#
# Release build (about 20x faster than the test profile). Exit status: cargo test's.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-200000}
from=${2:-$(( (RANDOM << 30) | (RANDOM << 15) | RANDOM ))}
echo "simulating seeds $from..$((from + seeds))"
BALLAST_SIM_SEEDS=$seeds BALLAST_SIM_FROM=$from \
  cargo test --release --lib tcp::sim -- --nocapture

#!/bin/sh
# Creates and removes 1000 persistent TAPs through the daemon (in a private network namespace)
# and prints the per-TAP median and p90 times. Needs root.
#   bench/taps.sh [N]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace --bins
exec target/release/bench-taps "${1:-1000}"

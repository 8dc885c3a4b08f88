#!/bin/sh
# vmnetd's built-in bridge next to a kernel Linux bridge, in one run: TCP throughput (iperf3)
# and 64-byte frame rate between two network namespaces. Prints medians and ratios. Root.
#   bench/bridge.sh [RUNS] [SECS]
set -eu
cd "$(dirname "$0")/.."
command -v iperf3 >/dev/null || { echo "iperf3 is not installed (apt-get install iperf3)" >&2; exit 1; }
cargo build --release --quiet --workspace --bins
exec target/release/bench-bridge "${1:-3}" "${2:-5}"

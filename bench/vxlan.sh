#!/bin/sh
# VXLAN between two hosts over a routed underlay, in one run: the kernel (vxlan device + Linux
# bridge per host) next to vmnetd (a daemon per host, built-in bridge + built-in tunnel port).
# TCP throughput (iperf3) and 64-byte frame rate from a client behind one host to a client
# behind the other. Prints medians, min-max spreads, ratios and CPU use. Root.
#   bench/vxlan.sh [RUNS] [SECS]
set -eu
cd "$(dirname "$0")/.."
command -v iperf3 >/dev/null || { echo "iperf3 is not installed (apt-get install iperf3)" >&2; exit 1; }
cargo build --release --quiet --workspace --bins
exec target/release/bench-vxlan "${1:-3}" "${2:-5}"

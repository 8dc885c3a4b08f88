#!/bin/sh
# How long libvirt waits for vmnetd-libvirt-hook at each kind of call (a fresh process per
# call, domain XML on stdin, against a daemon in a private network namespace). Needs root.
#   bench/hook.sh [N]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet --workspace --bins
exec target/release/bench-hook "${1:-200}"

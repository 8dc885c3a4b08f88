#!/bin/sh
# What keeping a Linux bridge's ports in place costs: N TAP ports on one Linux bridge; netlink
# requests while idle, and time and requests to re-enslave a port someone released. With a
# git revision, builds it too and measures both in one run (this build last). Root; strace.
#   bench/reconcile.sh [BEFORE_REV]          (PORTS=1000, FLAPS=5, IDLE=30 seconds)
set -eu
cd "$(dirname "$0")/.."
command -v strace >/dev/null || { echo "strace is missing: apt-get install strace" >&2; exit 1; }
cargo build --release --quiet --workspace --bins
builds="after=$PWD/target/release/vmnetd"
if [ -n "${1:-}" ]; then
    wt=$(mktemp -d)
    git worktree add --detach "$wt" "$1" >/dev/null
    trap 'git worktree remove --force "$wt"' EXIT INT TERM
    cargo build --release --quiet -p vmnetd --manifest-path "$wt/Cargo.toml" --target-dir target/bench-before
    builds="before=$PWD/target/bench-before/release/vmnetd $builds"
fi
# shellcheck disable=SC2086
target/release/bench-reconcile --ports "${PORTS:-1000}" --flaps "${FLAPS:-5}" --idle "${IDLE:-30}" $builds

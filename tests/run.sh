#!/bin/sh
# vmnetd's whole test suite, as CI runs it (`.ci/run` calls exactly this). Run as root on
# Debian 12: it installs the packages the tests use, then checks formatting and lints, builds,
# and runs unit, property, mock-virtqueue, network-namespace and end-to-end tests.
set -eu
cd "$(dirname "$0")/.."
. ./.ci/lib.sh

need_root
apt_install build-essential pkg-config ca-certificates curl iproute2
ensure_rust

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets --features vmnetd-tests/root-tests -- -D warnings
cargo build --locked --workspace --bins
cargo test --locked --workspace --features vmnetd-tests/root-tests

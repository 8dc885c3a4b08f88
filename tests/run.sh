#!/bin/sh
# vmnetd's whole test suite, as CI runs it (`.ci/run` calls exactly this). Run as root on
# Debian 12: it installs the packages the tests use, then checks formatting and lints, builds,
# and runs unit, property, mock-virtqueue, network-namespace and end-to-end tests.
set -eu
cd "$(dirname "$0")/.."
. ./.ci/lib.sh

need_root
# Real peers the tests use: iproute2, ping, tcpdump, tshark, iperf3, QEMU (TCG) with a
# busybox initramfs, DPDK's testpmd (virtio-user), libvirtd and virsh; cpio, kmod and xz
# build the guest.
apt_install build-essential pkg-config ca-certificates curl iproute2 iputils-ping \
    tcpdump tshark iperf3 qemu-system-x86 busybox-static cpio kmod xz-utils dpdk \
    libvirt-daemon-system libvirt-clients
ensure_rust
# The guest kernel (a Debian cloud kernel, downloaded, never installed) and its modules.
tests/guest/build.sh target/guest

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets --features vmnetd-tests/root-tests -- -D warnings
cargo build --locked --workspace --bins
cargo test --locked --workspace --features vmnetd-tests/root-tests

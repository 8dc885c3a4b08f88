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
# build the guest; dnsmasq-base and nftables for networks (tests/tests/network.rs);
# openvswitch-switch is the oracle of the flow-rule differential test (its own ovs-vswitchd);
# tmux drives `vmnetd top`; man-db shows the packaged man pages; python3-prometheus-client
# is the OpenMetrics parser the metrics test checks `/metrics` with.
apt_install build-essential pkg-config ca-certificates curl iproute2 iputils-ping \
    tcpdump tshark iperf3 qemu-system-x86 busybox-static cpio kmod xz-utils dpdk dpdk-dev \
    libvirt-daemon-system libvirt-clients dnsmasq-base nftables openvswitch-switch \
    tmux man-db python3-prometheus-client
ensure_rust
# The guest kernel (a Debian cloud kernel, downloaded, never installed) and its modules.
tests/guest/build.sh target/guest

cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets --features vmnetd-tests/root-tests -- -D warnings
cargo build --locked --workspace --bins
cargo test --locked --workspace --features vmnetd-tests/root-tests

# The Debian package: built with cargo-deb, installed with apt, the installed daemon run in a
# network namespace, purged (after the cargo tests: its postinst installs the libvirt hook).
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb
tests/deb.sh

# Every fuzz target for a short, bounded time (FUZZ_SECONDS each, default 20), on top of the
# minimised corpora in fuzz/seeds/ (one archive per target, from longer runs): a regression
# at any input boundary fails the run. cargo-fuzz builds
# with the stable toolchain through RUSTC_BOOTSTRAP (no nightly can be fetched here).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
(
    cd fuzz
    export RUSTC_BOOTSTRAP=1
    cargo fuzz build
    for t in $(cargo fuzz list); do
        mkdir -p "corpus/$t"
        if [ -f "seeds/$t.tar.gz" ]; then tar -C "corpus/$t" -xzf "seeds/$t.tar.gz"; fi
        log="target/fuzz-$t.log"
        if ! cargo fuzz run "$t" -- -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=4096 >"$log" 2>&1; then
            tail -n 60 "$log"
            echo "fuzz target $t failed (artifacts in fuzz/artifacts/$t)" >&2
            exit 1
        fi
        echo "fuzz: $t: $(grep -E '^Done [0-9]+ runs' "$log" || tail -n 1 "$log")"
    done
)

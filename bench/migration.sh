#!/bin/sh
# Live migration of a QEMU guest (TCG, 256 MiB) between two vhost-user ports on the same VLAN,
# through vmnetd and through OVS-DPDK (NORMAL, dpdkvhostuserclient ports) in one run: the
# guest and a namespace ping each other at 50/s while the guest migrates (HMP `migrate -d`,
# downtime-limit 20 ms, max-bandwidth 1G); per run the migration time, QEMU's downtime, pings
# lost each way and the longest gap the namespace saw. The guest announces itself
# (GUEST_ANNOUNCE) or not (guest_announce=off: the switch gets SEND_RARP). Root; reserves
# 1024 x 2 MiB huge pages for OVS-DPDK and puts the old reservation back.
#   bench/migration.sh [ROUNDS]       (default 3)
set -eu
cd "$(dirname "$0")/.."
for b in qemu-system-x86_64 busybox ethtool ovsdb-server ovs-vsctl /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk; do
    command -v "$b" >/dev/null 2>&1 || {
        echo "$b is missing: apt-get install qemu-system-x86 busybox-static ethtool openvswitch-switch-dpdk" >&2
        exit 1
    }
done
cargo build --quiet --workspace --bins
ROUNDS=${1:-3} cargo test --quiet -p vmnetd-tests --features root-tests --test migration \
    reference_vmnetd_and_ovs_dpdk_in_one_run -- --ignored --nocapture 2>&1 |
    grep -E '^(round|MIGRATION)|panicked|test result'

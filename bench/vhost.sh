#!/bin/sh
# vhost-user port to port, in one run: vmnetd's built-in bridge, OVS-DPDK (netdev bridge, two
# dpdkvhostuserclient ports on access VLAN 10, NORMAL) and dpdk-testpmd io-forwarding (the plumbing
# limit), driven by the same in-process generator and sink on CPU 0, each backend's datapath
# on CPU 1. Frames of 64, 512 and 1518 bytes; medians of several runs and the ratios. Then
# 64 KiB TSO frames guest to guest, and an idle daemon with 100 vhost-user ports. Root.
#   bench/vhost.sh [RUNS] [SECS]          (defaults: 5 runs of 3 s)
# OVS-DPDK and testpmd need huge pages: the script reserves 1024 x 2 MiB for the run and puts
# the previous reservation back when it ends. Its OVS and testpmd are private (own run
# directory, own DPDK file prefix) and it stops only what it started.
set -eu
cd "$(dirname "$0")/.."
for b in dpdk-testpmd /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk ovsdb-server ovs-vsctl; do
    command -v "$b" >/dev/null || {
        echo "$b is missing: apt-get install dpdk openvswitch-switch-dpdk" >&2
        exit 1
    }
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (generator on CPU 0, datapath on CPU 1)" >&2; exit 1; }
cargo build --release --quiet --workspace --bins

hp=/proc/sys/vm/nr_hugepages
old=$(cat $hp)
restore() { echo "$old" >$hp; }
trap restore EXIT INT TERM
[ "$old" -ge 1024 ] || echo 1024 >$hp
[ "$(cat $hp)" -ge 1024 ] || { echo "could not reserve 1024 huge pages (got $(cat $hp))" >&2; exit 1; }

runs=${1:-5}
secs=${2:-3}
target/release/bench-vhost --runs "$runs" --secs "$secs"
target/release/bench-vhost --gso --runs "$runs" --secs "$secs" --backends vmnetd,ovs
target/release/bench-vhost --idle

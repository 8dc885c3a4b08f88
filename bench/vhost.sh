#!/bin/sh
# vhost-user port to port, in one run: vmnetd's built-in bridge, OVS-DPDK (netdev bridge, two
# dpdkvhostuserclient ports on access VLAN 10, NORMAL) and dpdk-testpmd io-forwarding (the plumbing
# limit), each driven by the same guests on CPU 0, each backend's datapath on CPU 1:
#   driver        bench-vhost's in-process virtio-net driver (ring indices only, no per-frame work)
#   dpdk          target/vu-gen (bench/dpdk/vu-gen.c, built here): DPDK's own net_virtio_user PMD
#                 as generator and sink, default devargs (in_order on), fresh mbufs per burst
#   dpdk-noorder  the same with in_order=0
# Frames of 64, 512 and 1518 bytes; per guest a table of medians of several runs (with the
# min-max range, the IQR -- interquartile range over the median: the run-to-run spread, which
# one disturbed round does not decide -- the backend's cores and, for DPDK guests, how often
# the generator's TX ring was full: high = the backend was the limit) and the ratios (median,
# range and middle half of the per-round ratios). Then 64 KiB TSO frames guest to guest, and an
# idle daemon with 100 vhost-user ports. Root.
#   bench/vhost.sh [ROUNDS] [SECS]        (defaults: 5 rounds, runs of 3 s; every round starts
#                                         each backend in turn, so drift hits all alike; ratios
#                                         are medians of per-round pairs, with their range)
# GUESTS=driver,dpdk,dpdk-noorder picks the guests (throughput and CALLGRIND).
# COMPARE=REV also builds git revision REV and measures it in the same run (backend
# vmnetd-before), with the ratio this build / REV. BACKENDS=vmnetd,ovs,testpmd picks backends,
# SIZES=64,512,1518 frame sizes; THROUGHPUT_ONLY=1 skips the TSO and idle parts. RUNS_PER_START=N
# (DPDK guests) measures N runs per backend start: the spread between starts against the spread
# within one. Each run also reports the hypervisor's steal time on CPUs 0-1.
# Placement: before and after each backend start the bench times a cache line's round trip
# between CPUs 0 and 1 (c2c). On a shared VM the host sometimes runs the two vCPUs far apart
# (here 360-420 ns instead of 60-130), and then every backend falls to the same ~11 Mpps at
# 64 B: the rig, not the backend, is the limit. PLACEMENT=near (default) starts a backend only
# while the CPUs are near (waits up to PLACEMENT_WAIT=300 s) and measures it again if they
# moved apart during its runs; PLACEMENT=any does not wait. Either way the tables' medians,
# spreads and ratios are of the runs with the CPUs near, and the far runs are reported apart.
# (A far phase that starts and ends within one backend start goes unseen; the TSO part only
# waits.) `target/release/bench-vhost --probe 60` prints the round trip 4 times a second.
# Flow rules: backend vmnetd-rulesN is this build with N rules installed, one matching (the
# lowest priority, so every other rule's subtable is probed first); it is reported against
# vmnetd without rules, e.g. BACKENDS=vmnetd,vmnetd-rules10,vmnetd-rules1000 (also with CALLGRIND).
# Metrics: backend vmnetd-scraped is this build serving /metrics on a Unix socket with a client
# fetching it 10 times a second throughout; reported against vmnetd, e.g.
# BACKENDS=vmnetd,vmnetd-scraped SIZES=64 THROUGHPUT_ONLY=1 bench/vhost.sh.
# Migration: backend vmnetd-logging is this build with both guests migrating (dirty logs handed
# over, LOG_ALL acked, used rings logged), so every frame and used-ring write is also logged;
# reported against vmnetd: GUESTS=driver BACKENDS=vmnetd,vmnetd-logging THROUGHPUT_ONLY=1 bench/vhost.sh.
# CALLGRIND=1 instead counts the instructions vmnetd's datapath thread runs per forwarded
# frame under valgrind (this build, and REV with COMPARE), for each guest in GUESTS:
# deterministic to ~0.1 %, where packet rates on a shared machine vary by +-25 % between runs.
# CALLGRIND_KEEP=DIR keeps each datapath-thread profile there (for callgrind_annotate).
# OVS-DPDK, testpmd and vu-gen need huge pages: the script reserves 1024 x 2 MiB for the run
# and puts the previous reservation back when it ends. Its OVS, testpmd and vu-gen are private
# (own run directory, own DPDK file prefix) and it stops only what it started.
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
guests=${GUESTS:-driver,dpdk,dpdk-noorder}
case ",$guests," in
*,dpdk*)
    pkg-config --exists libdpdk || { echo "libdpdk is missing: apt-get install libdpdk-dev pkg-config" >&2; exit 1; }
    if [ ! -x target/vu-gen ] || [ bench/dpdk/vu-gen.c -nt target/vu-gen ]; then
        # -march=native after DPDK's own -march, so it wins.
        # shellcheck disable=SC2046
        cc -O3 $(pkg-config --cflags libdpdk) -march=native bench/dpdk/vu-gen.c -o target/vu-gen \
            $(pkg-config --libs libdpdk)
    fi
    ;;
esac

hp=/proc/sys/vm/nr_hugepages
old=$(cat $hp)
restore() { echo "$old" >$hp; }
trap restore EXIT INT TERM
[ "$old" -ge 1024 ] || echo 1024 >$hp
[ "$(cat $hp)" -ge 1024 ] || { echo "could not reserve 1024 huge pages (got $(cat $hp))" >&2; exit 1; }

runs=${1:-5}
secs=${2:-3}
backends=${BACKENDS:-vmnetd,ovs,testpmd}
compare=""
if [ -n "${COMPARE:-}" ]; then
    wt=$(mktemp -d)
    git worktree add --detach "$wt" "$COMPARE" >/dev/null
    trap 'restore; git worktree remove --force "$wt"' EXIT INT TERM
    cargo build --release --quiet -p vmnetd --manifest-path "$wt/Cargo.toml" --target-dir target/bench-before
    compare="--build before=$PWD/target/bench-before/release/vmnetd"
    backends="vmnetd-before,$backends"
fi
if [ -n "${CALLGRIND:-}" ]; then
    command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
    cb=${BACKENDS:-vmnetd}
    [ -n "$compare" ] && cb=vmnetd-before,$cb
    # shellcheck disable=SC2086
    target/release/bench-vhost --callgrind --secs "$secs" --backends "$cb" --sizes "${SIZES:-64,1518}" \
        --guest "$guests" $compare
    exit 0
fi
# shellcheck disable=SC2086
target/release/bench-vhost --runs "$runs" --secs "$secs" --backends "$backends" --sizes "${SIZES:-64,512,1518}" \
    --guest "$guests" --runs-per-start "${RUNS_PER_START:-1}" --placement "${PLACEMENT:-near}" \
    --placement-wait "${PLACEMENT_WAIT:-300}" $compare
[ -n "${THROUGHPUT_ONLY:-}" ] && exit 0
target/release/bench-vhost --gso --runs "$runs" --secs "$secs" --backends vmnetd,ovs --placement "${PLACEMENT:-near}" \
    --placement-wait "${PLACEMENT_WAIT:-300}"
target/release/bench-vhost --idle

#!/bin/sh
# NAT'd TCP throughput from a VM-side client to the "Internet", in one run:
#   (a) vmnetd: a built-in bridge, `vmnetd network add ... --nat`, the client on a netdev port;
#   (b) by hand: a kernel Linux bridge with the gateway address, per-interface forwarding and
#       an nft masquerade rule (what one writes without vmnetd).
# Everything runs in a private network namespace (the "host") with an `uplink` veth to an
# `upstream` namespace running iperf3 -s; the client is a namespace on a veth. Medians of RUNS
# runs of SECS seconds each (iperf3, client -> upstream), and the ratio. Root.
#   bench/network.sh [RUNS] [SECS]            (VMNETD=path/to/vmnetd to use another build)
set -eu
cd "$(dirname "$0")/.."
RUNS=${1:-3}
SECS=${2:-5}
for p in iperf3 nft dnsmasq ip; do
    command -v "$p" >/dev/null 2>&1 || [ -x "/usr/sbin/$p" ] || { echo "$p is not installed (apt-get install iperf3 nftables dnsmasq-base iproute2)" >&2; exit 1; }
done
if [ -z "${VMNETD:-}" ]; then
    cargo build --release --quiet --workspace --bins
    VMNETD=$PWD/target/release/vmnetd
fi
export VMNETD RUNS SECS
exec unshare -n sh -eu -c '
ip link set lo up
TAG=nb$$
W=$(mktemp -d /tmp/vmnetd-bench-net.XXXXXX)
UP=${TAG}up; CL=${TAG}cl
DPID=""
cleanup() {
    [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null || true
    for f in "$W"/run/networks/*/dnsmasq.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
    ip netns pids "$UP" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$UP" 2>/dev/null || true
    ip netns del "$CL" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT INT TERM

ip netns add "$UP"; ip netns add "$CL"
ip -n "$UP" link set lo up; ip -n "$CL" link set lo up
ip link add uplink type veth peer name eth0 netns "$UP"
ip -n "$UP" addr add 192.0.2.2/24 dev eth0; ip -n "$UP" link set eth0 up
ip addr add 192.0.2.1/24 dev uplink; ip link set uplink up
ip route add default via 192.0.2.2
ip link add cl0 type veth peer name eth0 netns "$CL"
ip link set cl0 up; ip -n "$CL" link set eth0 up
ip netns exec "$UP" sh -c "iperf3 -s >/dev/null 2>&1 &"
sleep 0.5

# Mbit/s of one iperf3 run from the client to upstream (the receiver side).
measure() {
    ip netns exec "$CL" iperf3 -c 192.0.2.2 -t "$SECS" -f m 2>/dev/null | awk "/receiver/ {print \$(NF-2)}"
}
median() { sort -n | awk "{a[NR]=\$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}"; }
series() { i=0; while [ $i -lt "$RUNS" ]; do measure; i=$((i+1)); done | median; }

# (a) vmnetd.
printf "# test: benchmark\n" > "$W/empty.toml"
"$VMNETD" daemon --config "$W/empty.toml" --state-dir "$W/state" --run-dir "$W/run" >"$W/daemon.log" 2>&1 &
DPID=$!
export VMNETD_SOCKET="$W/run/vmnetd.sock"
i=0; until "$VMNETD" status >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 200 ] && { cat "$W/daemon.log"; exit 1; }; sleep 0.05; done
"$VMNETD" bridge add br0
"$VMNETD" network add bench --bridge br0 --subnet 10.77.0.0/24 --nat >/dev/null
"$VMNETD" port add br0 cl0 --netdev cl0
ip -n "$CL" addr add 10.77.0.2/24 dev eth0
ip -n "$CL" route add default via 10.77.0.1
ip netns exec "$CL" ping -q -c 2 -W 2 192.0.2.2 >/dev/null || { echo "vmnetd network: no route to upstream" >&2; cat "$W/daemon.log" >&2; exit 1; }
OURS=$(series)
"$VMNETD" port del br0 cl0
"$VMNETD" network del bench
kill "$DPID"; wait "$DPID" 2>/dev/null || true; DPID=""
ip -n "$CL" addr flush dev eth0

# (b) Linux bridge + nft masquerade, by hand.
ip link add kbr type bridge; ip link set kbr up
ip link set cl0 master kbr
ip addr add 10.78.0.1/24 dev kbr
for ifc in kbr uplink; do echo 1 > /proc/sys/net/ipv4/conf/$ifc/forwarding; done
nft -f - <<EOF
table ip benchnat {
    chain post { type nat hook postrouting priority srcnat; ip saddr 10.78.0.0/24 oifname "uplink" masquerade; }
}
EOF
ip -n "$CL" addr add 10.78.0.2/24 dev eth0
ip -n "$CL" route add default via 10.78.0.1
ip netns exec "$CL" ping -q -c 2 -W 2 192.0.2.2 >/dev/null || { echo "linux bridge: no route to upstream" >&2; exit 1; }
LINUX=$(series)

echo "network benchmark: NAT'"'"'d TCP (iperf3) client -> upstream, $RUNS runs of $SECS s, medians"
printf "%-34s %10s Mbit/s\n" "vmnetd network (built-in bridge)" "$OURS"
printf "%-34s %10s Mbit/s\n" "Linux bridge + nft masquerade" "$LINUX"
awk -v a="$OURS" -v b="$LINUX" "BEGIN { printf \"ratio vmnetd / linux: %.2f\n\", (b > 0) ? a / b : 0 }"
'

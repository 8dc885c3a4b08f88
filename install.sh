#!/bin/sh
# Sets up vmnetd on a Debian 12 machine and starts the daemon on its embedded default config:
# installs build dependencies and the programs networks run (dnsmasq-base, nftables; Rust via
# rustup if cargo is missing), builds a release,
# installs the binaries to /usr/local/bin, and starts `vmnetd daemon` (under systemd when it
# runs, else in the background with its log in /var/log/vmnetd.log). Run as root.
set -eu
cd "$(dirname "$0")"
. ./.ci/lib.sh

need_root
# dnsmasq-base and nftables: the embedded default config's NAT'd network (DHCP, DNS, masquerade).
apt_install build-essential pkg-config ca-certificates curl iproute2 dnsmasq-base nftables
ensure_rust
cargo build --release --locked --workspace --bins
install -m 0755 target/release/vmnetd /usr/local/bin/vmnetd
install -m 0755 target/release/vmnetd-libvirt-hook /usr/local/bin/vmnetd-libvirt-hook
install -d /usr/local/share/doc/vmnetd && install -m 0644 README.md /usr/local/share/doc/vmnetd/
getent group vmnetd >/dev/null || groupadd --system vmnetd

if [ -d /run/systemd/system ]; then
    install -m 0644 vmnetd/dist/vmnetd.service /etc/systemd/system/vmnetd.service
    systemctl daemon-reload
    systemctl enable --now vmnetd.service
    systemctl restart vmnetd.service
else
    # No systemd (containers, minimal VMs): run it in the background.
    if [ -S /run/vmnetd/vmnetd.sock ] && vmnetd status >/dev/null 2>&1; then
        pkill -TERM -x vmnetd || true
        sleep 1
    fi
    setsid nohup /usr/local/bin/vmnetd daemon >>/var/log/vmnetd.log 2>&1 </dev/null &
fi
i=0
until vmnetd status >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
        echo "vmnetd did not start; see /var/log/vmnetd.log or journalctl -u vmnetd" >&2
        exit 1
    fi
    sleep 0.1
done
vmnetd status
# libvirt present: install the hook (it leaves domains that do not use vmnetd alone).
if [ -d /etc/libvirt ]; then
    vmnetd-libvirt-hook install
fi

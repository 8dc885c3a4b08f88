#!/bin/sh
# Sets up vmnetd on a Debian 12 machine and starts the daemon on its embedded default config:
# installs build dependencies (Rust via rustup if cargo is missing), builds the Debian package
# (packaging/build-deb.sh) and installs it with apt-get, which brings the programs networks
# run (dnsmasq-base, nftables). The package puts the binaries in /usr/bin, the systemd unit,
# man pages and completions in place, and its postinst makes the `vmnetd` group, installs the
# libvirt hook when libvirt is present, and starts the service under systemd. Without
# systemd, this starts `vmnetd daemon` in the background, its log in /var/log/vmnetd.log.
# Run as root; run it again after a change to rebuild and reinstall.
set -eu
cd "$(dirname "$0")"
. ./.ci/lib.sh

need_root
# man-db: the package's man pages (`man vmnetd-port`).
apt_install build-essential pkg-config ca-certificates curl git iproute2 dnsmasq-base nftables man-db
ensure_rust
packaging/build-deb.sh

# What earlier versions of this script copied by hand (/usr/local/bin comes first in PATH,
# and a unit in /etc/systemd/system would shadow the package's).
if [ -f /etc/systemd/system/vmnetd.service ] &&
    grep -q '^ExecStart=/usr/local/bin/vmnetd daemon' /etc/systemd/system/vmnetd.service; then
    echo "removing /etc/systemd/system/vmnetd.service (from an earlier install.sh)"
    if [ -d /run/systemd/system ]; then
        systemctl disable vmnetd.service || true
    fi
    rm -f /etc/systemd/system/vmnetd.service
fi
for f in /usr/local/bin/vmnetd /usr/local/bin/vmnetd-libvirt-hook /usr/local/share/doc/vmnetd/README.md; do
    if [ -f "$f" ]; then
        echo "removing $f (from an earlier install.sh)"
        rm -f "$f"
    fi
done
rmdir /usr/local/share/doc/vmnetd 2>/dev/null || true

# The pid of the daemon answering on the default socket, if one does.
running_pid() {
    /usr/bin/vmnetd status --json 2>/dev/null | sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' | head -n 1
}

# --reinstall: a rebuild of the same version replaces the installed one.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall ./target/debian/vmnetd_*.deb

if [ ! -d /run/systemd/system ]; then
    # No systemd (containers, minimal VMs): run it in the background, restarting one that
    # runs already so that it is the new binary.
    if [ -S /run/vmnetd/vmnetd.sock ] && pid=$(running_pid) && [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        i=0
        while [ -d "/proc/$pid" ] && [ "$i" -lt 100 ]; do
            sleep 0.1
            i=$((i + 1))
        done
    fi
    setsid nohup /usr/bin/vmnetd daemon >>/var/log/vmnetd.log 2>&1 </dev/null &
fi
i=0
until /usr/bin/vmnetd status >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
        echo "vmnetd did not start; see /var/log/vmnetd.log or journalctl -u vmnetd" >&2
        exit 1
    fi
    sleep 0.1
done
/usr/bin/vmnetd status

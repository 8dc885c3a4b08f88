#!/bin/sh
# The Debian package end to end (issue #17), as root on Debian 12: builds it with
# packaging/build-deb.sh, installs it with apt-get, checks what it installed (binaries, man
# pages, completions, docs, the `vmnetd` group, the libvirt hook), runs the installed daemon,
# then purges the package and checks that nothing it or its postinst made is left.
#
# This machine is also the one the tests run on, so the daemon runs in a network namespace of
# its own, on a config here that declares one built-in bridge and no network (no nftables, no
# dnsmasq), with its state, run dir and socket in a temp dir. /etc/libvirt/hooks is put back
# as it was. A vmnetd package already installed here (install.sh) is left alone: the test is
# skipped then, since it would purge it.
set -eu
cd "$(dirname "$0")/.."
. ./.ci/lib.sh

need_root
apt_install iproute2 man-db dnsmasq-base nftables
ensure_rust

installed() {
    dpkg-query -W -f='${Status}' vmnetd 2>/dev/null | grep -q "install ok installed"
}
# dpkg knows the package in any state (installed, half-installed, config-files).
known() {
    case "$(dpkg-query -W -f='${Status}' vmnetd 2>/dev/null || true)" in
    "" | *" not-installed") return 1 ;;
    esac
}
fail() {
    echo "tests/deb.sh: FAIL: $*" >&2
    exit 1
}
preinstalled=""
installed && preinstalled=1

start=$(date +%s)
tmp=$(mktemp -d /tmp/vmnetd-deb.XXXXXX)
ns="vmnetd-deb-$$"
ns_made=""
daemon_pid=""
we_installed=""
hooks=/etc/libvirt/hooks
hooks_saved=""
if [ -e "$hooks" ]; then
    cp -a "$hooks" "$tmp/hooks.before"
    hooks_saved=1
fi
group_before=""
getent group vmnetd >/dev/null && group_before=1
statedir_before=""
[ -e /var/lib/vmnetd ] && statedir_before=1

stop_daemon() {
    [ -n "$daemon_pid" ] || return 0
    kill -TERM "$daemon_pid" 2>/dev/null || true
    i=0
    while kill -0 "$daemon_pid" 2>/dev/null && [ "$i" -lt 100 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
}

# SIGHUP: libvirtd and virtqemud rescan their hooks (as vmnetd-libvirt-hook install does).
reload_libvirt() {
    for d in /proc/[0-9]*; do
        case "$(cat "$d/comm" 2>/dev/null)" in
        libvirtd | virtqemud) kill -HUP "${d#/proc/}" 2>/dev/null || true ;;
        esac
    done
}

restore_hooks() {
    if [ -n "$hooks_saved" ]; then
        if ! diff -r "$tmp/hooks.before" "$hooks" >/dev/null 2>&1; then
            find "$hooks" -mindepth 1 -delete
            cp -a "$tmp/hooks.before/." "$hooks/"
            reload_libvirt
        fi
        touch -r "$tmp/hooks.before" "$hooks"
    elif [ -e "$hooks" ]; then
        rm -rf "$hooks"
        reload_libvirt
    fi
}

cleanup() {
    rc=$?
    set +e
    stop_daemon
    [ -n "$ns_made" ] && ip netns del "$ns" 2>/dev/null
    if [ -n "$we_installed" ] && known; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q vmnetd >/dev/null 2>&1
    fi
    restore_hooks
    if [ -z "$group_before" ] && getent group vmnetd >/dev/null; then
        groupdel vmnetd
    fi
    if [ -z "$statedir_before" ]; then
        rm -f /var/lib/vmnetd/.package-made-group
        rmdir /var/lib/vmnetd 2>/dev/null
    fi
    if [ "$rc" != 0 ] && [ -f "$tmp/daemon.log" ]; then
        echo "--- daemon log:" >&2
        cat "$tmp/daemon.log" >&2
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# run_daemon BIN: the packaged daemon, in a network namespace of its own, answers.
run_daemon() {
    sock="$tmp/run/vmnetd.sock"
    mkdir -p "$tmp/state" "$tmp/run"
    cat >"$tmp/vmnetd.toml" <<EOF
# tests/deb.sh: one built-in bridge; no [[network]], so no nftables or dnsmasq.
[daemon]
state_dir = "$tmp/state"
run_dir = "$tmp/run"
socket_group = "vmnetd"

[[bridge]]
name = "debtest0"
kind = "builtin"
EOF
    ip netns add "$ns"
    ns_made=1
    ip -n "$ns" link set lo up
    ip netns exec "$ns" "$1" --socket "$sock" daemon --config "$tmp/vmnetd.toml" \
        --state-dir "$tmp/state" --run-dir "$tmp/run" >"$tmp/daemon.log" 2>&1 </dev/null &
    daemon_pid=$!
    i=0
    until "$1" --socket "$sock" status >"$tmp/status" 2>&1; do
        kill -0 "$daemon_pid" 2>/dev/null || fail "the installed vmnetd daemon exited"
        i=$((i + 1))
        [ "$i" -le 150 ] || fail "the installed vmnetd daemon does not answer on $sock"
        sleep 0.1
    done
    "$1" --socket "$sock" bridge list | grep -q debtest0 || fail "vmnetd bridge list has no debtest0"
    [ "$(stat -c %G "$sock")" = vmnetd ] || fail "the control socket's group is $(stat -c %G "$sock"), not vmnetd"
    stop_daemon
    ip netns del "$ns"
    ns_made=""
}

# --- build
packaging/build-deb.sh >"$tmp/build.log" 2>&1 || {
    tail -n 40 "$tmp/build.log" >&2
    fail "packaging/build-deb.sh failed"
}
deb=$(tail -n 1 "$tmp/build.log")
[ -f "$deb" ] || fail "build-deb.sh printed no .deb: $deb"
echo "deb: built $deb"

if [ -n "$preinstalled" ]; then
    # The package is installed here already (install.sh): the apt install and purge round
    # would remove it, so the .deb is checked from its contents instead, and said so loudly.
    root="$tmp/root"
    dpkg-deb -x "$deb" "$root"
    for f in /usr/bin/vmnetd /usr/bin/vmnetd-libvirt-hook /lib/systemd/system/vmnetd.service \
        /usr/share/man/man1/vmnetd-port.1.gz /usr/share/man/man1/vmnetd-port-add.1.gz \
        /usr/share/bash-completion/completions/vmnetd /usr/share/zsh/vendor-completions/_vmnetd \
        /usr/share/fish/vendor_completions.d/vmnetd.fish /usr/share/doc/vmnetd/vmnetd.toml.example; do
        [ -f "$root$f" ] || fail "the .deb has no $f"
    done
    man -l -P cat "$root/usr/share/man/man1/vmnetd-port.1.gz" >"$tmp/man.txt" 2>&1 || fail "man -l vmnetd-port.1.gz"
    grep -q 'VMNETD-PORT(1)' "$tmp/man.txt" || fail "vmnetd-port.1.gz is no port page"
    run_daemon "$root/usr/bin/vmnetd"
    echo "deb: NOTE: the vmnetd package is installed on this machine, so its contents, man pages and" >&2
    echo "deb: NOTE: daemon were checked from the .deb; the apt install/purge round was NOT run here." >&2
    exit 0
fi

# Which of the package's paths exist already (/usr/bin...): those stay after the purge.
dpkg-deb -c "$deb" | awk '{ print $NF }' | sed 's|^\./|/|; s|/$||' | grep -v '^$' | grep -vx '/' >"$tmp/paths"
: >"$tmp/existed"
while read -r p; do
    if [ -e "$p" ] || [ -L "$p" ]; then echo "$p" >>"$tmp/existed"; fi
done <"$tmp/paths"

# --- install
we_installed=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "./$deb" >"$tmp/install.log" 2>&1 || {
    cat "$tmp/install.log" >&2
    fail "apt-get install ./$deb failed"
}
installed || fail "vmnetd is not installed after apt-get install"
dpkg -L vmnetd >"$tmp/files"
for f in /usr/bin/vmnetd /usr/bin/vmnetd-libvirt-hook /lib/systemd/system/vmnetd.service \
    /usr/share/man/man1/vmnetd.1.gz /usr/share/man/man1/vmnetd-port.1.gz \
    /usr/share/man/man1/vmnetd-port-add.1.gz /usr/share/man/man1/vmnetd-network-lease-add.1.gz \
    /usr/share/bash-completion/completions/vmnetd /usr/share/zsh/vendor-completions/_vmnetd \
    /usr/share/fish/vendor_completions.d/vmnetd.fish \
    /usr/share/doc/vmnetd/README.md /usr/share/doc/vmnetd/vmnetd.toml.example; do
    grep -qx "$f" "$tmp/files" || fail "dpkg -L vmnetd does not list $f"
    [ -f "$f" ] || fail "$f is listed but not installed"
done
echo "deb: installed: $(grep -c '^/usr/share/man/man1/' "$tmp/files") man pages, binaries, completions, docs"

grep -q '^ExecStart=/usr/bin/vmnetd daemon$' /lib/systemd/system/vmnetd.service || fail "unit: ExecStart"
# shellcheck disable=SC2016
grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' /lib/systemd/system/vmnetd.service || fail "unit: ExecReload"
grep -q '^Restart=always$' /lib/systemd/system/vmnetd.service || fail "unit: Restart"
cmp -s /usr/share/doc/vmnetd/vmnetd.toml.example vmnetd/src/default.toml || fail "vmnetd.toml.example is not vmnetd/src/default.toml"
/usr/bin/vmnetd --version | grep -q '^vmnetd ' || fail "/usr/bin/vmnetd --version"

man -P cat vmnetd-port >"$tmp/man.txt" 2>&1 || {
    cat "$tmp/man.txt" >&2
    fail "man vmnetd-port"
}
if ! grep -q 'vmnetd-port-add' "$tmp/man.txt" || ! grep -q 'VMNETD-PORT(1)' "$tmp/man.txt"; then
    cat "$tmp/man.txt" >&2
    fail "man vmnetd-port shows no port page"
fi
man -P cat vmnetd-network-lease-add 2>/dev/null | grep -q 'lease' || fail "man vmnetd-network-lease-add"
bash -c '. /usr/share/bash-completion/completions/vmnetd && complete -p vmnetd' >/dev/null 2>&1 ||
    fail "the bash completion does not load"

getent group vmnetd >/dev/null || fail "postinst did not make the group vmnetd"
if [ -d /etc/libvirt ]; then
    cmp -s /etc/libvirt/hooks/qemu.d/vmnetd /usr/bin/vmnetd-libvirt-hook ||
        fail "postinst did not install the libvirt hook"
fi
echo "deb: man vmnetd-port, completions, group vmnetd$([ -d /etc/libvirt ] && echo ', libvirt hook') ok"

run_daemon /usr/bin/vmnetd
echo "deb: /usr/bin/vmnetd daemon ran (in netns $ns) and answered status"

# --- purge: nothing left that the package or its postinst made
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q vmnetd >"$tmp/purge.log" 2>&1 || {
    cat "$tmp/purge.log" >&2
    fail "apt-get purge vmnetd failed"
}
we_installed=""
if known; then
    fail "dpkg still knows vmnetd after purge: $(dpkg-query -W -f='${Status}' vmnetd)"
fi
left=""
while read -r p; do
    [ "$p" != "/." ] || continue
    if grep -qxF "$p" "$tmp/existed"; then continue; fi
    if [ -e "$p" ] || [ -L "$p" ]; then left="$left $p"; fi
done <"$tmp/files"
[ -z "$left" ] || fail "left after purge:$left"
if [ -z "$group_before" ]; then
    if getent group vmnetd >/dev/null; then fail "the group vmnetd is left after purge"; fi
elif ! getent group vmnetd >/dev/null; then
    fail "purge removed the group vmnetd, which was there before"
fi
if [ -z "$statedir_before" ] && [ -e /var/lib/vmnetd ]; then
    fail "/var/lib/vmnetd is left after purge (and holds no state: $(ls -A /var/lib/vmnetd))"
fi
if [ -n "$hooks_saved" ]; then
    if ! diff -r "$tmp/hooks.before" "$hooks" >/dev/null 2>&1; then
        if [ -e "$tmp/hooks.before/qemu.d/vmnetd" ]; then
            # Another hook copy was there (a test's); postinst replaced it. cleanup puts it back.
            echo "deb: a hook copy was in $hooks before the test; it is put back"
        else
            fail "$hooks differs after purge: $(diff -r "$tmp/hooks.before" "$hooks" 2>&1 | tr '\n' ' ')"
        fi
    fi
elif [ -e "$hooks" ]; then
    fail "$hooks is left after purge"
fi
for d in /proc/[0-9]*; do
    case "$(readlink "$d/exe" 2>/dev/null)" in
    /usr/bin/vmnetd*) fail "a /usr/bin/vmnetd process is left (pid ${d#/proc/})" ;;
    esac
done
echo "deb: purged: no file of the package left$([ -z "$group_before" ] && echo ', group vmnetd removed')"
echo "deb: ok ($(($(date +%s) - start))s)"

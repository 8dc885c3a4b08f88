# Shared by install.sh and tests/run.sh (POSIX sh).

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$0: run as root (it installs packages and creates network devices)" >&2
        exit 1
    fi
}

# apt_install PKG...: installs the packages that are not installed yet (one apt-get update).
apt_install() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "installing:$missing"
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -q
        APT_UPDATED=1
    fi
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
        PATH="$HOME/.cargo/bin:$PATH"
        export PATH
    fi
}

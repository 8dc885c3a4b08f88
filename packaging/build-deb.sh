#!/bin/sh
# Builds the vmnetd Debian package: release binaries, the man pages and completions
# (vmnetd-docgen, into target/packaging/gen), then `cargo deb`. Prints the .deb's path as the
# last line. Needs cargo (and installs cargo-deb with cargo when missing); no root needed.
set -eu
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
    export PATH
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb

# Dates the man pages by the last commit (reproducible), unless the caller set it.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || true)
fi
if [ -n "$SOURCE_DATE_EPOCH" ]; then
    export SOURCE_DATE_EPOCH
fi

cargo build --release --locked -p vmnetd -p vmnetd-libvirt-hook -p vmnetd-docgen
gen=target/packaging/gen
rm -rf "$gen"
target/release/vmnetd-docgen "$gen"
# --no-build: the binaries above are what goes in; cargo deb would build only vmnetd's.
rm -f target/debian/vmnetd_*.deb
# cargo-deb warns about every asset under target/ outside target/release (it means built
# binaries); the generated pages and completions are not, so that warning is dropped.
log=target/packaging/cargo-deb.log
if ! cargo deb -p vmnetd --no-build >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
grep -v "^warning: Only source paths starting with exactly 'target/release/' .*'\.\./target/packaging/gen/" "$log" || true
ls target/debian/vmnetd_*.deb

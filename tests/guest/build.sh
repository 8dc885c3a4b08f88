#!/bin/sh
# Builds the test guest's parts into OUTDIR (default target/guest): a Debian cloud kernel
# (`apt-get download`, never installed) and the modules the guests load, in load order.
# The tests assemble a per-guest initramfs from these plus busybox-static and a script.
#   tests/guest/build.sh [OUTDIR]
set -eu
OUT=${1:-$(dirname "$0")/../../target/guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[ -s "$OUT/vmlinuz" ] && [ -s "$OUT/modules.order" ] && exit 0

command -v busybox >/dev/null || { echo "busybox-static is not installed" >&2; exit 1; }
pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
PKG=$(pkg)
if [ -z "$PKG" ]; then
    apt-get update -q >/dev/null
    PKG=$(pkg)
fi
[ -n "$PKG" ] || { echo "cannot resolve linux-image-cloud-amd64 from the apt sources" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download "$PKG" >/dev/null 2>&1 || apt-get download "$PKG")
dpkg -x "$WORK"/*.deb "$WORK/root"
KVER=$(ls "$WORK/root/lib/modules")
depmod -b "$WORK/root" "$KVER"
cp "$WORK/root/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
rm -rf "$OUT/modules" && mkdir -p "$OUT/modules"
# Load order, dependencies first: a modules.dep line "mod: dep1 dep2" loads in the reverse
# order (dep2, dep1, mod), as modprobe does.
: > "$OUT/modules.order"
for m in virtio_pci virtio_net 8021q; do
    line=$(grep -E "(^|/)$m\.ko(\.[a-z]+)?:" "$WORK/root/lib/modules/$KVER/modules.dep")
    for rel in $(echo "$line" | tr -d ':' | tr ' ' '\n' | grep . | tac); do
        name=$(basename "$rel")
        grep -qx "$name" "$OUT/modules.order" && continue
        case "$name" in
            *.ko) cp "$WORK/root/lib/modules/$KVER/$rel" "$OUT/modules/$name" ;;
            *.ko.xz) xz -dc "$WORK/root/lib/modules/$KVER/$rel" > "$OUT/modules/${name%.xz}"; name=${name%.xz} ;;
            *.ko.zst) zstd -dqc "$WORK/root/lib/modules/$KVER/$rel" > "$OUT/modules/${name%.zst}"; name=${name%.zst} ;;
        esac
        echo "$name" >> "$OUT/modules.order"
    done
done
echo "$KVER" > "$OUT/kernel.version"
echo "guest kernel $KVER in $OUT"

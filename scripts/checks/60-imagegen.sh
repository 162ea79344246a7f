#!/usr/bin/env bash
# imagegen: the CLI flow a release uses, against the real tools (a few seconds):
# build with an .xz copy → bmaptool copies the .xz through the .bmap → configure in place →
# inspect → configure --output --compress zstd → the zstd stream equals the in-place image.
# Then the heavy test `cargo test` skips: two builds from a 335 MB rootfs are bit-for-bit equal
# (tests/reproducible.rs, about 30 s and 1 GB of I/O under /var/tmp and /dev/shm).
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"
ensure_rust
cargo build -q -p resin-imagegen
IG=${CARGO_TARGET_DIR:-$RESIN_ROOT/target}/debug/resin-imagegen
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
export SOURCE_DATE_EPOCH=1700000000

mkdir -p "$W/rootfs/boot" "$W/rootfs/etc" "$W/boot/EFI/BOOT"
echo kernel >"$W/rootfs/boot/vmlinuz"; echo resin >"$W/rootfs/etc/hostname"
head -c 200000 /dev/urandom >"$W/boot/EFI/BOOT/BOOTAA64.EFI"
"$IG" build --layout imagegen/layouts/resin-ab.toml --set boot.size=36MiB --set rootA.size=32MiB \
  --set state.size=8MiB --set data.min-size=8MiB --rootfs "$W/rootfs" --boot "$W/boot" \
  --output "$W/disk.img" --compress xz >/dev/null
[ -f "$W/disk.img.bmap" ] && [ -f "$W/disk.img.xz" ] || die "build did not write .bmap and .xz"
bmaptool -q copy --bmap "$W/disk.img.bmap" "$W/disk.img.xz" "$W/flashed.img"
cmp "$W/disk.img" "$W/flashed.img" || die "bmaptool copy of the .xz differs from the image"

printf '{"apiEndpoint":"http://10.0.2.2:8080","fleetId":3,"fleetName":"c","deviceType":"qemuarm64","provisioningKey":"check-key"}' >"$W/config.json"
"$IG" configure "$W/disk.img" --output "$W/streamed.img.zst" --compress zstd --config "$W/config.json" >/dev/null
"$IG" configure "$W/disk.img" --config "$W/config.json" >/dev/null
"$IG" inspect "$W/disk.img" | grep -q '"provisioningKey": "check-key"' || die "inspect does not show the config"
zstd -q -d "$W/streamed.img.zst" -o "$W/streamed.img"
cmp "$W/disk.img" "$W/streamed.img" || die "configured stream differs from configure in place"
sgdisk -v "$W/disk.img" | grep -q "No problems found" || die "sgdisk -v found problems"

# A damaged image: inspect exits 2.
truncate -s -1M "$W/disk.img"
set +e; "$IG" inspect "$W/disk.img" >/dev/null 2>"$W/err"; rc=$?; set -e
[ $rc = 2 ] || die "inspect of a truncated image exited $rc, not 2"

cargo test -q -p resin-imagegen --test reproducible -- --ignored
log "imagegen check passed"

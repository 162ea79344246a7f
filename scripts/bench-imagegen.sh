#!/usr/bin/env bash
# Benchmarks resin-imagegen (see BENCHMARKS.md, "## imagegen"):
#  1. the A/B layout (boot 100 MiB, rootA/rootB 1 GiB, state 64 MiB, data 256 MiB) built from
#     the same rootfs by resin-imagegen and by Debian's genimage, in one run: wall times,
#     their ratio, and on-disk (sparse) sizes;
#  2. `resin-imagegen configure` time on 256 MiB, 2 GiB and 8 GiB images (median of 7).
#
#   scripts/bench-imagegen.sh [--rootfs DIR|TAR]   # default: a ~400 MB tree copied from /usr
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$RESIN_ROOT"
ROOTFS=""
[ "${1:-}" = "--rootfs" ] && ROOTFS=$2
install_packages
ensure_rust
W=${BENCH_DIR:-$RESIN_RUN/bench-imagegen}
rm -rf "$W" && mkdir -p "$W"
export SOURCE_DATE_EPOCH=1700000000

log "building resin-imagegen (release)"
cargo build --release -q -p resin-imagegen
IG=$RESIN_ROOT/target/release/resin-imagegen

if [ -z "$ROOTFS" ]; then
  ROOTFS=$W/rootfs
  mkdir -p "$ROOTFS/usr/lib" "$ROOTFS/usr/share" "$ROOTFS/boot"
  cp -a /usr/lib/python3 /usr/lib/python3.11 /usr/lib/gcc "$ROOTFS/usr/lib/"
  cp -a /usr/share/perl "$ROOTFS/usr/share/"
  cp -a /usr/sbin /etc "$ROOTFS/" 2>/dev/null || true
  head -c 8M /dev/urandom >"$ROOTFS/boot/vmlinuz"
fi
if [ -f "$ROOTFS" ]; then  # a tarball: both tools get the same extracted tree
  mkdir -p "$W/rootfs-x" && tar --numeric-owner -xpf "$ROOTFS" -C "$W/rootfs-x" && ROOTFS=$W/rootfs-x
fi
mkdir -p "$W/input/EFI/BOOT"
head -c 1M /dev/urandom >"$W/input/EFI/BOOT/BOOTAA64.EFI"
printf '{}' >"$W/input/config.json"
sync
ROOT_MB=$(du -sm "$ROOTFS" | cut -f1)
log "rootfs: $ROOTFS (${ROOT_MB} MiB)"

ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
ondisk() { du -B1 "$1" | cut -f1; }

# --- genimage -----------------------------------------------------------------------------
cat >"$W/genimage.cfg" <<CFG
image boot.vfat {
  vfat { label = "RESIN-BOOT" files = { "EFI", "config.json" } }
  size = 100M
}
image rootA.ext4 {
  ext4 { label = "resin-rootA" use-mke2fs = true }
  size = 1G
  mountpoint = "/"
}
image rootB.ext4 { ext4 { label = "resin-rootB" use-mke2fs = true } size = 1G empty = true }
image state.ext4 { ext4 { label = "resin-state" use-mke2fs = true } size = 64M empty = true }
image data.ext4 { ext4 { label = "resin-data" use-mke2fs = true } size = 256M empty = true }
image genimage.img {
  hdimage { partition-table-type = "gpt" align = 4M }
  partition resin-boot { image = "boot.vfat" partition-type-uuid = "U" }
  partition resin-rootA { image = "rootA.ext4" partition-type-uuid = "L" }
  partition resin-rootB { image = "rootB.ext4" partition-type-uuid = "L" }
  partition resin-state { image = "state.ext4" partition-type-uuid = "L" }
  partition resin-data { image = "data.ext4" partition-type-uuid = "L" }
}
CFG
sync; t=$(date +%s%N)
genimage --config "$W/genimage.cfg" --rootpath "$ROOTFS" --inputpath "$W/input" \
  --outputpath "$W/gen-out" --tmppath "$W/gen-tmp" >"$W/genimage.log" 2>&1 || { tail -20 "$W/genimage.log"; die "genimage failed"; }
GEN_MS=$(ms "$t")
GEN_DISK=$(ondisk "$W/gen-out/genimage.img")

# --- resin-imagegen (same layout: data = 256 MiB at disk.size=2476MiB) ------------------
SETS=(--set disk.size=2476MiB)
sync; t=$(date +%s%N)
"$IG" build --layout imagegen/layouts/resin-ab.toml "${SETS[@]}" --rootfs "$ROOTFS" --boot "$W/input" \
  --output "$W/resin.img" --no-bmap >/dev/null
IG_MS=$(ms "$t")
IG_DISK=$(ondisk "$W/resin.img")
sync; t=$(date +%s%N)
"$IG" build --layout imagegen/layouts/resin-ab.toml "${SETS[@]}" --rootfs "$ROOTFS" --boot "$W/input" \
  --output "$W/resin-bmap.img" >/dev/null
IGB_MS=$(ms "$t")
"$IG" inspect "$W/resin.img" >/dev/null

ratio=$(awk -v a="$IG_MS" -v b="$GEN_MS" 'BEGIN { printf "%.2f", a / b }')
ratiob=$(awk -v a="$IGB_MS" -v b="$GEN_MS" 'BEGIN { printf "%.2f", a / b }')
echo
echo "## build: A/B layout from a ${ROOT_MB} MiB rootfs ($(nproc) cores)"
echo "| tool | wall time | image size | on disk (sparse) |"
echo "|---|---|---|---|"
echo "| genimage $(genimage --version 2>/dev/null | awk '{print $NF}') | ${GEN_MS} ms | $(stat -c %s "$W/gen-out/genimage.img") | $GEN_DISK |"
echo "| resin-imagegen (--no-bmap) | ${IG_MS} ms | $(stat -c %s "$W/resin.img") | $IG_DISK |"
echo "| resin-imagegen (with .bmap) | ${IGB_MS} ms | $(stat -c %s "$W/resin-bmap.img") | $(ondisk "$W/resin-bmap.img") |"
echo "ratio resin-imagegen / genimage: ${ratio}x (no bmap), ${ratiob}x (with bmap)"
rm -rf "$W/gen-out" "$W/gen-tmp" "$W/resin-bmap.img"*

# --- configure --------------------------------------------------------------------------
printf '{"apiEndpoint":"http://10.0.2.2:8080","fleetId":1,"fleetName":"bench","deviceType":"qemuarm64","provisioningKey":"%s"}' \
  "$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$W/config.json"
mkdir -p "$W/small"; echo x >"$W/small/hello"
echo
echo "## configure (in place, CLI process wall time, median of 7)"
echo "| image | configure median | min | max |"
echo "|---|---|---|---|"
for size in 256MiB 2GiB 8GiB; do
  img=$W/cfg-$size.img
  "$IG" build --layout imagegen/layouts/resin-ab.toml --set rootA.size=32MiB --set disk.size=$size \
    --set state.size=8MiB --rootfs "$W/small" --boot "$W/input" --output "$img" --no-bmap >/dev/null
  sync
  times=()
  for i in 1 2 3 4 5 6 7; do
    t=$(date +%s%N)
    "$IG" configure "$img" --config "$W/config.json" >/dev/null
    times+=( $(( ($(date +%s%N) - t) / 1000 )) )
  done
  sorted=$(printf '%s\n' "${times[@]}" | sort -n)
  med=$(echo "$sorted" | sed -n 4p); min=$(echo "$sorted" | head -1); max=$(echo "$sorted" | tail -1)
  printf '| %s | %d.%03d ms | %d.%03d ms | %d.%03d ms |\n' "$size" $((med/1000)) $((med%1000)) $((min/1000)) $((min%1000)) $((max/1000)) $((max%1000))
  rm -f "$img"
done
rm -rf "$W/resin.img" "$W/rootfs" "$W/rootfs-x"

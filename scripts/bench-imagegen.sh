#!/usr/bin/env bash
# Benchmarks resin-imagegen (see BENCHMARKS.md, "## imagegen"):
#  1. the A/B layout (boot 100 MiB, rootA/rootB 1 GiB, state 64 MiB, data 256 MiB) built from
#     the same rootfs by resin-imagegen (with and without its .bmap), by Debian's genimage and
#     by systemd-repart (as root, with loop devices; definitions from `render-repart`), each
#     peer followed by `bmaptool create`; BENCH_PAIRS rounds (default 5) in rotating order:
#     median and min, same-run ratios, each step's CPU/wall and the machine's I/O wait;
#  2. `resin-imagegen configure` time on 256 MiB, 2 GiB and 8 GiB images (median of 7).
#
#   scripts/bench-imagegen.sh [--rootfs DIR|TAR]   # default: a ~400 MB tree copied from /usr
# Needs root (systemd-repart formats and copies through loop devices).
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
IG=${CARGO_TARGET_DIR:-$RESIN_ROOT/target}/release/resin-imagegen

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

# --- the peers' definitions --------------------------------------------------------------
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
# systemd-repart: the definitions rendered from the same layout, plus what to copy in.
SETS=(--set disk.size=2476MiB)
"$IG" render-repart --layout imagegen/layouts/resin-ab.toml "${SETS[@]}" --out "$W/repart.d" >/dev/null
# The boot vfat goes in as blocks (CopyBlocks=) made with mkfs.vfat + mcopy inside the timed
# run, as genimage makes it: repart's CopyFiles= into vfat mounts it, and this machine's
# kernel cannot mount vfat ("No such device").
sed -i '/^Format=/d' "$W/repart.d/10-boot.conf"
printf 'CopyBlocks=%s/boot.vfat\n' "$W" >>"$W/repart.d/10-boot.conf"
printf 'CopyFiles=%s:/\n' "$ROOTFS" >>"$W/repart.d/20-rootA.conf"

# One run: wall ms, the tool's CPU (user+sys, its children included) ms, and whether the disk
# was the bottleneck: the busy share of the disk holding $W during the run (/proc/diskstats
# io_ticks, as iostat's %util) and the share of the run in which some task stalled on I/O
# (/proc/pressure/io). Both are machine-wide: the machine is shared. (This VM's /proc/stat
# I/O-wait counter barely moves, so it is not used.)
DISK=$(lsblk -no PKNAME "$(df --output=source "$W" | tail -1)" 2>/dev/null | head -1)
[ -n "$DISK" ] || DISK=$(basename "$(df --output=source "$W" | tail -1)")
io_stat() {
  local ticks stall
  ticks=$(awk -v d="$DISK" '$3 == d {print $13}' /proc/diskstats)
  stall=$(sed -n 's/^some .*total=\([0-9]*\)/\1/p' /proc/pressure/io 2>/dev/null || echo 0)
  echo "${ticks:-0} ${stall:-0}"
}
measure() {  # measure NAME CMD…  → appends "NAME wall cpu disk-busy% io-stall%" to $W/runs.tsv
  local name=$1; shift
  sync
  local t0 s0 t1 s1
  read -r t0 s0 < <(io_stat)
  local t; t=$(date +%s%N)
  local TIMEFORMAT='%U %S' rc=0  # bash's `time`: CPU of the function and its children
  { time "$@" >"$W/$name.log" 2>&1 || rc=$?; } 2>"$W/time.out"
  [ "$rc" = 0 ] || { tail -20 "$W/$name.log"; die "$name failed"; }
  local wall; wall=$(ms "$t")
  read -r t1 s1 < <(io_stat)
  local cpu; cpu=$(awk '{printf "%d", ($1 + $2) * 1000}' "$W/time.out")
  local busy; busy=$(awk -v a=$((t1 - t0)) -v w="$wall" 'BEGIN { printf "%.0f", w ? 100 * a / w : 0 }')
  local stall; stall=$(awk -v a=$((s1 - s0)) -v w="$wall" 'BEGIN { printf "%.0f", w ? a / w / 10 : 0 }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$wall" "$cpu" "$busy" "$stall" >>"$W/runs.tsv"
}
# Each tool's previous output is deleted before its timed run (freeing gigabytes of blocks is
# not part of building an image).
clean() { rm -rf "$W/gen-out" "$W/gen-tmp" "$W/repart.img" "$W/boot.vfat" "$W/resin.img" "$W/resin.img.bmap" "$W/resin-nobmap.img"; sync; }
run_genimage() {
  genimage --config "$W/genimage.cfg" --rootpath "$ROOTFS" --inputpath "$W/input" \
    --outputpath "$W/gen-out" --tmppath "$W/gen-tmp"
}
run_genimage_bmap() { bmaptool -q create -o "$W/gen-out/genimage.img.bmap" "$W/gen-out/genimage.img"; }
run_repart() {
  mkfs.vfat -C -n RESIN-BOOT "$W/boot.vfat" 102400 >/dev/null
  MTOOLS_SKIP_CHECK=1 mcopy -s -i "$W/boot.vfat" "$W/input/EFI" "$W/input/config.json" ::/
  systemd-repart --empty=create --size=2476M --definitions="$W/repart.d" --dry-run=no \
    --no-pager "$W/repart.img"
}
run_repart_bmap() { bmaptool -q create -o "$W/repart.img.bmap" "$W/repart.img"; }
run_resin() {
  "$IG" build --layout imagegen/layouts/resin-ab.toml "${SETS[@]}" --rootfs "$ROOTFS" \
    --boot "$W/input" --output "$W/resin.img"
}
run_resin_nobmap() {
  "$IG" build --layout imagegen/layouts/resin-ab.toml "${SETS[@]}" --rootfs "$ROOTFS" \
    --boot "$W/input" --output "$W/resin-nobmap.img" --no-bmap
}

# --- PAIRS rounds; each round runs every tool once, the order rotating ---------------------
PAIRS=${BENCH_PAIRS:-5}
: >"$W/runs.tsv"
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$PAIRS"); do
  order=(genimage repart resin resin_nobmap)
  k=$(( (i - 1) % 4 ))
  for j in 0 1 2 3; do
    tool=${order[$(( (j + k) % 4 ))]}
    clean
    case $tool in
      genimage) measure genimage run_genimage; measure genimage-bmap run_genimage_bmap ;;
      repart) measure repart run_repart; measure repart-bmap run_repart_bmap ;;
      resin) measure resin run_resin ;;
      resin_nobmap) measure resin-nobmap run_resin_nobmap ;;
    esac
  done
  log "round $i done (load $(cut -d' ' -f1-3 /proc/loadavg))"
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
# The last round's outputs, for the sizes below.
clean
run_genimage >/dev/null 2>&1 && run_repart >/dev/null 2>&1 && run_resin >/dev/null
"$IG" inspect "$W/resin.img" >/dev/null

# Per round, a peer's time is its build plus `bmaptool create`.
python3 - "$W/runs.tsv" "$ROOT_MB" "$(nproc)" <<'PY'
import sys, statistics as st
rows = [l.split('\t') for l in open(sys.argv[1]).read().splitlines()]
runs = {}
for name, wall, cpu, busy, stall in rows:
    runs.setdefault(name, []).append((int(wall), int(cpu), float(busy), float(stall)))
def tot(peer):
    return [b[0] + m[0] for b, m in zip(runs[peer], runs[peer + '-bmap'])]
series = {
    'genimage 16 + bmaptool create': tot('genimage'),
    'systemd-repart 252 + bmaptool create': tot('repart'),
    'resin-imagegen (with its .bmap)': [r[0] for r in runs['resin']],
    'resin-imagegen (--no-bmap)': [r[0] for r in runs['resin-nobmap']],
}
print(f"\n## build: A/B layout from a {sys.argv[2]} MiB rootfs ({sys.argv[3]} cores), {len(runs['resin'])} rounds")
print("| tool | median ms | min ms | runs (ms) |")
print("|---|---|---|---|")
for k, v in series.items():
    print(f"| {k} | {st.median(v):.0f} | {min(v)} | {', '.join(map(str, v))} |")
print("\n| step | median wall ms | median CPU (user+sys) ms | CPU / wall | disk busy (median) | some task stalled on I/O (median) |")
print("|---|---|---|---|---|---|")
for name in ['genimage', 'genimage-bmap', 'repart', 'repart-bmap', 'resin', 'resin-nobmap']:
    r = runs[name]
    w = st.median(x[0] for x in r); c = st.median(x[1] for x in r)
    busy = st.median(x[2] for x in r); stall = st.median(x[3] for x in r)
    print(f"| {name} | {w:.0f} | {c:.0f} | {c / w:.2f} | {busy:.0f} % | {stall:.0f} % |")
res = series['resin-imagegen (with its .bmap)']
for peer in ['genimage 16 + bmaptool create', 'systemd-repart 252 + bmaptool create']:
    p = series[peer]
    per_round = [a / b for a, b in zip(res, p)]
    print(f"\nresin-imagegen (with .bmap) / {peer}: median of per-round ratios "
          f"{st.median(per_round):.2f}x (range {min(per_round):.2f}-{max(per_round):.2f}), "
          f"ratio of medians {st.median(res) / st.median(p):.2f}x, ratio of minimums {min(res) / min(p):.2f}x")
PY
echo "| image | size | on disk (sparse) |"
echo "|---|---|---|"
for f in "$W/gen-out/genimage.img" "$W/repart.img" "$W/resin.img"; do
  echo "| $(basename "$f") | $(stat -c %s "$f") | $(ondisk "$f") |"
done
rm -rf "$W/gen-out" "$W/gen-tmp" "$W/repart.img"* "$W/resin-nobmap.img"*

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
rm -rf "$W/resin.img"* "$W/rootfs" "$W/rootfs-x"

#!/usr/bin/env bash
# Builds (and caches) the host-side artefacts for the QEMU device: the arm64
# Debian rootfs stand-in, the kernel + initrd, the GRUB EFI binary and the
# aarch64 resin-supervisor.
#
#   qemu-tests/scripts/assets.sh rootfs|kernel|initrd|grub|supervisor
#
# Each prints the path of its artefact on stdout (logs go to stderr).
# Everything lands under $RESIN_QEMU_CACHE (default /var/cache/resin-qemu),
# keyed by a hash of its inputs, so a rerun with the same inputs is a no-op.
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib/common.sh"

# Bump when a step below changes in a way the hash inputs do not show.
ASSETS_VERSION=1
CACHE=${RESIN_QEMU_CACHE:-/var/cache/resin-qemu}
mkdir -p "$CACHE"

ROOTFS_PACKAGES=(
  systemd-sysv udev kmod dbus iproute2 ca-certificates
  rauc rauc-service grub-common
  docker.io apparmor
  e2fsprogs dosfstools fdisk procps
)

hash_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

ensure_arm64_arch() {
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
    apt-get -o DPkg::Lock::Timeout=600 update -qq
  fi
}

# Downloads an arm64 .deb into the cache (never installs it on the host).
arm64_deb() {
  local pkg=$1 f
  f=$(ls "$CACHE"/debs/"${pkg}"_*_arm64.deb 2>/dev/null | head -1 || true)
  if [ -z "$f" ]; then
    ensure_arm64_arch
    mkdir -p "$CACHE/debs"
    (cd "$CACHE/debs" && apt-get download -q "$pkg:arm64" >/dev/null 2>&1) || die "apt-get download $pkg:arm64 failed"
    f=$(ls "$CACHE"/debs/"${pkg}"_*_arm64.deb | head -1)
  fi
  echo "$f"
}

# rootfs: prints the path of the cached base rootfs directory (never modified
# after it is complete; the device rootfs is a copy of it).
build_rootfs() {
  local key out mirror
  key=$(hash_of "v$ASSETS_VERSION" bookworm "${ROOTFS_PACKAGES[@]}")
  out=$CACHE/rootfs-$key
  if [ ! -e "$out/.complete" ]; then
    ensure_binfmt
    mirror=$(debian_mirror)
    log "building the arm64 rootfs with mmdebstrap ($mirror), about 5 minutes"
    rm -rf "$out.partial"
    # A target without a tar extension makes mmdebstrap write a directory.
    mmdebstrap --quiet --arch=arm64 --variant=minbase \
      --include="$(IFS=,; echo "${ROOTFS_PACKAGES[*]}")" \
      bookworm "$out.partial" "$mirror" >"$CACHE/rootfs-$key.log" 2>&1 \
      || { tail -40 "$CACHE/rootfs-$key.log" >&2; die "mmdebstrap failed (log: $CACHE/rootfs-$key.log)"; }
    sync
    rm -rf "$out"
    mv "$out.partial" "$out"
    touch "$out/.complete"
  fi
  echo "$out"
}

# The Debian arm64 kernel, unpacked on the host (mkinitramfs under emulation
# takes 16 minutes; our own initrd takes a second).
kernel_version() {
  apt-cache depends linux-image-arm64:arm64 2>/dev/null | sed -n 's/.*Depends: linux-image-\(.*\):arm64/\1/p' | head -1
}

# kernel: prints the directory holding boot/vmlinuz-<kver> and lib/modules/<kver>.
build_kernel() {
  local kver out deb
  ensure_arm64_arch
  kver=$(kernel_version)
  [ -n "$kver" ] || die "no linux-image-arm64:arm64 in the apt lists (run apt-get update)"
  out=$CACHE/kernel-$kver
  if [ ! -e "$out/.complete" ]; then
    log "unpacking the arm64 kernel $kver"
    deb=$(arm64_deb "linux-image-$kver")
    rm -rf "$out.partial" && mkdir -p "$out.partial"
    dpkg -x "$deb" "$out.partial"
    depmod -b "$out.partial" "$kver"
    rm -rf "$out" && mv "$out.partial" "$out"
    touch "$out/.complete"
  fi
  echo "$out"
}

# Modules the initrd loads (their dependencies come along from modules.dep).
# virtio_rng: entropy from the host (-device virtio-rng-pci) before systemd
# starts; without it the kernel's crng waits up to a minute after a reboot.
INITRD_MODULES=(virtio_pci virtio_mmio virtio_blk virtio_rng crc32c_generic ext4 overlay)

# Resolves module names to paths under lib/modules/<kver>, dependencies first.
ordered_modules() {
  python3 -c '
import sys
dep = {}
for line in open(sys.argv[1]):
    k, _, v = line.partition(":")
    dep[k] = v.split()
byname = {k.rsplit("/", 1)[-1].split(".ko")[0].replace("-", "_"): k for k in dep}
seen, out = set(), []
def add(path):
    if path in seen:
        return
    seen.add(path)
    for d in reversed(dep[path]):
        add(d)
    out.append(path)
for name in sys.argv[2:]:
    add(byname[name.replace("-", "_")])
print("\n".join(out))
' "$@"
}

# initrd: prints the path of a small busybox initrd for that kernel.
build_initrd() {
  local kdir kver key out work m bb
  kdir=$(build_kernel)
  kver=$(basename "$kdir"); kver=${kver#kernel-}
  key=$(hash_of "v$ASSETS_VERSION" "$kver" "${INITRD_MODULES[@]}" "$(cat "$RESIN_ROOT/qemu-tests/guest/initrd-init")")
  out=$CACHE/initrd-$key.img
  if [ ! -s "$out" ]; then
    log "building the initrd for $kver"
    bb=$(arm64_deb busybox-static)
    work=$(mktemp -d)
    mkdir -p "$work"/{bin,dev,proc,sys,lower,rw,newroot,state,lib/modules}
    mkdir -p "$work/bb" && dpkg -x "$bb" "$work/bb"
    cp "$work/bb/bin/busybox" "$work/bin/busybox" && rm -rf "$work/bb"
    for a in sh mount umount insmod sleep grep sed cat echo switch_root mkdir head cut ls rm mv; do
      ln -s busybox "$work/bin/$a"
    done
    : >"$work/modules.list"
    while read -r m; do
      mkdir -p "$work/lib/modules/$(dirname "$m")"
      cp "$kdir/lib/modules/$kver/$m" "$work/lib/modules/$m"
      echo "/lib/modules/$m" >>"$work/modules.list"
    done < <(ordered_modules "$kdir/lib/modules/$kver/modules.dep" "${INITRD_MODULES[@]}")
    install -m 0755 "$RESIN_ROOT/qemu-tests/guest/initrd-init" "$work/init"
    (cd "$work" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9) >"$out.partial"
    rm -rf "$work"
    mv "$out.partial" "$out"
  fi
  echo "$out"
}

GRUB_MODULES=(part_gpt fat ext2 normal linux loadenv test regexp echo configfile search search_label
  search_fs_uuid gzio cat ls reboot halt sleep true)

# grub: prints the path of BOOTAA64.EFI; its prefix is /EFI/BOOT on the
# partition it was loaded from (where imagegen puts grub.cfg and grubenv).
build_grub() {
  local key out
  preflight_grub
  key=$(hash_of "v$ASSETS_VERSION" "${GRUB_MODULES[@]}" "$(dpkg-query -W -f='${Version}' grub-efi-arm64-bin:arm64)")
  out=$CACHE/grub-$key/BOOTAA64.EFI
  if [ ! -s "$out" ]; then
    mkdir -p "$(dirname "$out")"
    grub-mkimage -O arm64-efi -o "$out.partial" -p /EFI/BOOT -d /usr/lib/grub/arm64-efi "${GRUB_MODULES[@]}"
    mv "$out.partial" "$out"
  fi
  echo "$out"
}

# What the steps below exec or read from the host, checked before they start
# (and by the fresh-root check, scripts/checks/10-fresh-root.sh, in a clean
# Debian root with only RESIN_APT_PACKAGES installed).
preflight_grub() {
  need grub-mkimage
  [ -f /usr/lib/grub/arm64-efi/linux.mod ] \
    || die "preflight: /usr/lib/grub/arm64-efi/linux.mod is missing (package grub-efi-arm64-bin:arm64)"
}

# The cross build's linker and arm64 std: a one-line program is compiled and
# linked for aarch64 with Debian's rustc, as build_supervisor will.
preflight_cross() {
  local w sysroot
  need /usr/bin/rustc /usr/bin/cargo aarch64-linux-gnu-gcc
  sysroot=$(/usr/bin/rustc --print sysroot)
  [ -d "$sysroot/lib/rustlib/aarch64-unknown-linux-gnu/lib" ] \
    || die "preflight: $sysroot/lib/rustlib/aarch64-unknown-linux-gnu/lib is missing (package libstd-rust-web-dev:arm64)"
  w=$(mktemp -d)
  echo 'fn main() { println!("resin"); }' >"$w/m.rs"
  if ! /usr/bin/rustc --target aarch64-unknown-linux-gnu -C linker=aarch64-linux-gnu-gcc -o "$w/m" "$w/m.rs" 2>"$w/err"; then
    cat "$w/err" >&2; rm -rf "$w"
    die "preflight: the aarch64 cross link failed (packages gcc-aarch64-linux-gnu, libc6-dev:arm64, libstd-rust-web-dev:arm64)"
  fi
  rm -rf "$w"
}

# supervisor: cross-compiles resin-supervisor for aarch64 with Debian's Rust
# (rustc-web/cargo-web 1.96 + libstd-rust-web-dev:arm64; nothing outside the
# package registries) into /var/cache/resin-cargo/aarch64-debian-<toolchain>-<lock>
# (outside the clone, so a fresh clone starts warm), and prints the binary's path.
# LTO is off here: the binary is larger, the build minutes shorter.
build_supervisor() {
  local t
  preflight_cross
  t=$(ensure_cargo_target aarch64-debian /usr/bin/rustc)
  # --locked in CI; in a shared working tree others' edits may move Cargo.lock.
  log "cross-compiling resin-supervisor for aarch64 (Debian rustc $(/usr/bin/rustc --version | cut -d' ' -f2))"
  # rustup's shims come first on PATH; keep them out so Debian's 1.96 is used.
  (cd "$RESIN_ROOT" && env PATH=/usr/bin:/bin:/usr/sbin:/sbin RUSTC=/usr/bin/rustc \
    CARGO_TARGET_DIR="$t" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    /usr/bin/cargo build --quiet --release ${CI:+--locked} --target aarch64-unknown-linux-gnu \
      -p resin-supervisor --bin resin-supervisor) >&2
  echo "$t/aarch64-unknown-linux-gnu/release/resin-supervisor"
}

# Module directories a QEMU virt device never needs (keeps the slot small).
PRUNE_MODULES=(sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging
  drivers/iio drivers/net/ethernet drivers/usb drivers/hid drivers/input drivers/video drivers/mmc
  drivers/bluetooth drivers/mtd drivers/nfc drivers/scsi drivers/net/can drivers/isdn drivers/hwmon
  drivers/phy drivers/pinctrl drivers/clk drivers/soc drivers/regulator drivers/mfd drivers/power
  net/bluetooth net/wireless net/mac80211)

# device-rootfs OUT VERSION: composes the guest rootfs directory OUT from the
# cached base rootfs, kernel + initrd, the files in qemu-tests/guest/rootfs and
# these optional inputs (environment variables):
#   RESIN_QEMU_SUPERVISOR   the aarch64 resin-supervisor binary
#   RESIN_QEMU_SUPERVISOR_UNIT  its systemd unit (supervisor/dist/resin-supervisor.service)
#   RESIN_QEMU_RENDERED     a `resin-imagegen render` output dir (etc/fstab, etc/rauc/system.conf)
#   RESIN_QEMU_KEYRING      RAUC keyring (CA certificate, PEM)
#   RESIN_QEMU_REGISTRY     the registry as the guest sees it (default 10.0.2.2:55000)
#   RESIN_QEMU_EXTRA        a directory copied over the result last
#   RESIN_QEMU_MASK         units to mask (space-separated), e.g. resin-supervisor.service
#   RESIN_QEMU_GUARD_TIMEOUT  resin-boot-guard's timeout in seconds (default 600)
build_device_rootfs() {
  local out=${1:?usage: device-rootfs OUT VERSION} version=${2:?usage: device-rootfs OUT VERSION}
  local base kdir kver initrd g reg=${RESIN_QEMU_REGISTRY:-10.0.2.2:55000} u p
  base=$(build_rootfs)
  kdir=$(build_kernel)
  kver=$(basename "$kdir"); kver=${kver#kernel-}
  initrd=$(build_initrd)
  g=$RESIN_ROOT/qemu-tests/guest/rootfs
  rm -rf "$out" && mkdir -p "$(dirname "$out")"
  cp -a "$base" "$out"
  rm -f "$out/.complete"

  # Kernel, initrd and (pruned) modules: the kernel is updated with the slot.
  mkdir -p "$out/boot" "$out/lib/modules"
  cp "$kdir/boot/vmlinuz-$kver" "$out/boot/vmlinuz"
  cp "$initrd" "$out/boot/initrd.img"
  cp -a "$kdir/lib/modules/$kver" "$out/lib/modules/"
  for p in "${PRUNE_MODULES[@]}"; do rm -rf "$out/lib/modules/$kver/kernel/$p"; done
  depmod -b "$out" "$kver"

  cp -a "$g/." "$out/"
  mkdir -p "$out/mnt/boot" "$out/mnt/state" "$out/mnt/data" "$out/etc/docker" "$out/etc/rauc"
  echo resin >"$out/etc/hostname"
  rm -f "$out/etc/os-release"
  cat >"$out/etc/os-release" <<OS
PRETTY_NAME="resinOS $version (Debian bookworm stand-in)"
NAME="resinOS"
ID=resinos
ID_LIKE=debian
VERSION="$version"
VERSION_ID=$version
OS
  cat >"$out/etc/docker/daemon.json" <<JSON
{
  "data-root": "/mnt/data/docker",
  "insecure-registries": ["$reg"],
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "2" }
}
JSON
  : >"$out/etc/machine-id"   # the initrd fills it from resin-state

  # Units: networkd on, serial getty and periodic jobs off, the marker on.
  u=$out/etc/systemd/system
  mkdir -p "$u/multi-user.target.wants" "$u/sockets.target.wants"
  ln -sf /lib/systemd/system/systemd-networkd.service "$u/multi-user.target.wants/systemd-networkd.service"
  ln -sf /etc/systemd/system/resin-boot-marker.service "$u/multi-user.target.wants/resin-boot-marker.service"
  ln -sf /etc/systemd/system/resin-boot-times.service "$u/multi-user.target.wants/resin-boot-times.service"
  for p in serial-getty@ttyAMA0.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer dpkg-db-backup.timer systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$u/$p"
  done

  if [ -n "${RESIN_QEMU_SUPERVISOR:-}" ]; then
    install -m 0755 "$RESIN_QEMU_SUPERVISOR" "$out/usr/bin/resin-supervisor"
  fi
  if [ -n "${RESIN_QEMU_SUPERVISOR_UNIT:-}" ]; then
    install -m 0644 "$RESIN_QEMU_SUPERVISOR_UNIT" "$u/resin-supervisor.service"
    ln -sf /etc/systemd/system/resin-supervisor.service "$u/multi-user.target.wants/resin-supervisor.service"
    # The boot guard beside it (supervisor/dist), with a TCG-sized timeout.
    p=$(dirname "$RESIN_QEMU_SUPERVISOR_UNIT")
    if [ -f "$p/resin-boot-guard" ]; then
      install -D -m 0755 "$p/resin-boot-guard" "$out/usr/libexec/resin-boot-guard"
      install -m 0644 "$p/resin-boot-guard.service" "$u/resin-boot-guard.service"
      ln -sf /etc/systemd/system/resin-boot-guard.service "$u/multi-user.target.wants/resin-boot-guard.service"
      mkdir -p "$u/resin-boot-guard.service.d"
      printf '[Service]\nEnvironment=RESIN_BOOT_GUARD_TIMEOUT=%s\n' "${RESIN_QEMU_GUARD_TIMEOUT:-600}" \
        >"$u/resin-boot-guard.service.d/qemu.conf"
    fi
    # config.json's rootCA into the system trust store (supervisor/dist).
    if [ -f "$p/resin-ca" ]; then
      install -D -m 0755 "$p/resin-ca" "$out/usr/libexec/resin-ca"
      install -m 0644 "$p/resin-ca.service" "$u/resin-ca.service"
      ln -sf /etc/systemd/system/resin-ca.service "$u/multi-user.target.wants/resin-ca.service"
    fi
  fi
  # Units masked in this OS version (e.g. the supervisor, for the rollback test).
  for p in ${RESIN_QEMU_MASK:-}; do
    rm -f "$u/$p" "$u/multi-user.target.wants/$p"
    ln -s /dev/null "$u/$p"
  done
  if [ -n "${RESIN_QEMU_RENDERED:-}" ]; then
    [ -f "$RESIN_QEMU_RENDERED/etc/fstab" ] && install -m 0644 "$RESIN_QEMU_RENDERED/etc/fstab" "$out/etc/fstab"
    [ -f "$RESIN_QEMU_RENDERED/etc/rauc/system.conf" ] && install -m 0644 "$RESIN_QEMU_RENDERED/etc/rauc/system.conf" "$out/etc/rauc/system.conf"
  fi
  if [ -n "${RESIN_QEMU_KEYRING:-}" ]; then
    install -m 0644 "$RESIN_QEMU_KEYRING" "$out/etc/rauc/keyring.pem"
  fi
  if [ -n "${RESIN_QEMU_EXTRA:-}" ]; then
    cp -a "$RESIN_QEMU_EXTRA/." "$out/"
  fi
  echo "$out"
}

case "${1:-}" in
  rootfs) build_rootfs ;;
  kernel) build_kernel ;;
  initrd) build_initrd ;;
  grub) build_grub ;;
  supervisor) build_supervisor ;;
  busybox-deb) arm64_deb busybox-static ;;
  device-rootfs) shift; build_device_rootfs "$@" ;;
  preflight)
    # What the steps exec: mmdebstrap (with arch-test and qemu-user for arm64),
    # dpkg/depmod/cpio for the kernel and initrd, GRUB, the cross toolchain.
    need mmdebstrap arch-test qemu-aarch64-static dpkg-deb depmod cpio gzip apt-get
    preflight_grub
    preflight_cross
    log "preflight: device assets ok (mmdebstrap, kernel/initrd tools, GRUB arm64-efi, aarch64 cross build)"
    ;;
  *) die "usage: $0 rootfs|kernel|initrd|grub|supervisor|device-rootfs OUT VERSION" ;;
esac

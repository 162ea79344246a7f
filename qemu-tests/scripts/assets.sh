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

# The one OS definition: the resin-owned files of the stand-in (units, scripts,
# configs, docker's daemon.json, containerd's config, RAUC's system.conf, the
# boot payload) come from meta-resin's recipes, by running their install steps
# (recipe-install.sh); the stand-in has no copy of any of them. What Debian
# provides instead of Yocto is the package list above. scripts/checks/70-meta-resin.sh
# fails when a recipe of the layer with an install step (or a rootfs step of
# the image class) is in neither list below, or when the stand-in's files differ from meta-resin's (QEMU_ONLY
# lists what the stand-in adds, each with its reason).
STANDIN_RECIPES=(
  recipes-core/base-files/base-files_%.bbappend
  recipes-containers/docker-moby/docker-moby_%.bbappend
  recipes-containers/containerd/containerd_%.bbappend
  recipes-core/rauc/resin-rauc-conf.bb
  recipes-resin/resin-bootfiles/resin-bootfiles.bb
  recipes-resin/resin-persist/resin-persist.bb
  recipes-resin/resin-watchdog/resin-watchdog.bb
  recipes-resin/resin-supervisor/resin-supervisor.bb
  recipes-resin/resin-qemu-guest/resin-qemu-guest.bb
  'resin-image.bbclass#resin_boot_payload'
  'resin-image.bbclass#resin_slot_dtbs'
)
# Recipes of the layer with an install step, and steps of the image class
# (ROOTFS_POSTPROCESS_COMMAND), that the stand-in does not run, each with why.
NOT_IN_STANDIN=(
  # The native image tool (resin-imagegen-native), not part of resin-image; the
  # harness runs the workspace's own resin-imagegen.
  recipes-resin/resin-imagegen/resin-imagegen.bb
  # U-Boot (Raspberry Pi only: its :resin:rpi steps merge the layout's env
  # Kconfig fragment and put the layout's fw_env.config into the u-boot package,
  # which is not part of resin-image); the stand-in boots GRUB.
  recipes-bsp/u-boot/u-boot_%.bbappend
  # /boot/vmlinuz and /boot/initrd.img: the stand-in boots Debian's kernel with
  # its own busybox initrd (build_kernel, build_initrd above).
  'resin-image.bbclass#resin_boot_links'
)
# What the stand-in adds to meta-resin's files (path globs, relative to /):
QEMU_ONLY=(
  # The OS version of each test release (Yocto: DISTRO_VERSION), the hostname
  # (Yocto: base-files) and the machine-id the initrd fills from the state partition in the OS's fstab.
  etc/os-release etc/hostname etc/machine-id
  # The test registry as an insecure one, through Debian's docker.service
  # (EnvironmentFile=/etc/default/docker, $DOCKER_OPTS).
  etc/default/docker
  # Debian does not enable networkd (Yocto's systemd with PACKAGECONFIG
  # networkd does), and its serial getty and periodic jobs only cost boot time.
  etc/systemd/system/multi-user.target.wants/systemd-networkd.service
  'etc/systemd/system/serial-getty@ttyAMA0.service' etc/systemd/system/apt-daily.timer
  etc/systemd/system/apt-daily-upgrade.timer etc/systemd/system/e2scrub_all.timer
  etc/systemd/system/e2scrub_reap.service etc/systemd/system/fstrim.timer
  etc/systemd/system/dpkg-db-backup.timer etc/systemd/system/systemd-networkd-wait-online.service
  # The stand-in's root is the initrd's overlay, not the slot's ext4, so
  # systemd-repart cannot find the disk from /: it is named (the virtio disk).
  etc/systemd/system/systemd-repart.service.d/qemu.conf
  # The cross-built supervisor (Yocto: the recipe's cargo do_install) and the
  # boot guard's timeout sized for TCG.
  usr/bin/resin-supervisor etc/systemd/system/resin-boot-guard.service.d/qemu.conf
  # The supervisor's log also on the serial console, where the runner reads it
  # (the wrong-ca scenario waits for its certificate error; there is no shell).
  etc/systemd/system/resin-supervisor.service.d/qemu.conf
)

# os-layer OUT VERSION: the resin-owned files of the stand-in of OS VERSION,
# into the empty directory OUT (device-rootfs copies it over the Debian rootfs).
# Inputs (environment variables):
#   RESIN_QEMU_RENDERED     a `resin-imagegen render` output dir (fstab, system.conf, grub.cfg)
#   RESIN_QEMU_KEYRING      RAUC keyring (CA certificate, PEM)
#   RESIN_QEMU_DEPLOY       boot files as bitbake deploys them (default: GRUB's
#                           EFI binary as grub-efi-bootaa64.efi, from `assets.sh grub`)
#   RESIN_QEMU_SUPERVISOR   the aarch64 resin-supervisor binary (none: its unit is masked)
#   RESIN_QEMU_REGISTRY     the registry as the guest sees it (default 10.0.2.2:55000)
#   RESIN_QEMU_GUARD_TIMEOUT  resin-boot-guard's timeout in seconds (default 600)
# Nothing here is cached: every run composes it from the working tree, so an
# edit of meta-resin is always in the next run's device.
build_os_layer() {
  local out=${1:?usage: os-layer OUT VERSION} version=${2:?usage: os-layer OUT VERSION}
  local reg=${RESIN_QEMU_REGISTRY:-10.0.2.2:55000} u p deploy tmp=""
  rm -rf "$out" && mkdir -p "$out"
  deploy=${RESIN_QEMU_DEPLOY:-}
  if [ -z "$deploy" ]; then
    tmp=$(mktemp -d)
    deploy=$tmp
    cp "$(build_grub)" "$deploy/grub-efi-bootaa64.efi"
  fi
  RESIN_QEMU_DEPLOY=$deploy bash "$RESIN_ROOT/qemu-tests/scripts/recipe-install.sh" "$out" "${STANDIN_RECIPES[@]}"
  [ -z "$tmp" ] || rm -rf "$tmp"

  echo resin >"$out/etc/hostname"
  cat >"$out/etc/os-release" <<OS
PRETTY_NAME="resinOS $version (Debian bookworm stand-in)"
NAME="resinOS"
ID=resinos
ID_LIKE=debian
VERSION="$version"
VERSION_ID=$version
OS
  : >"$out/etc/machine-id"   # the initrd fills it (from the fstab's state partition)
  mkdir -p "$out/etc/default"
  echo "DOCKER_OPTS=\"--insecure-registry=$reg\"" >"$out/etc/default/docker"

  u=$out/etc/systemd/system
  mkdir -p "$u/multi-user.target.wants"
  ln -sf /lib/systemd/system/systemd-networkd.service "$u/multi-user.target.wants/systemd-networkd.service"
  for p in serial-getty@ttyAMA0.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer dpkg-db-backup.timer systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$u/$p"
  done
  if [ -n "${RESIN_QEMU_SUPERVISOR:-}" ]; then
    install -D -m 0755 "$RESIN_QEMU_SUPERVISOR" "$out/usr/bin/resin-supervisor"
  else
    RESIN_QEMU_MASK="${RESIN_QEMU_MASK:-} resin-supervisor.service"
  fi
  mkdir -p "$u/systemd-repart.service.d"
  printf '[Service]\nExecStart=\nExecStart=/usr/bin/systemd-repart --dry-run=no /dev/vda\n' \
    >"$u/systemd-repart.service.d/qemu.conf"
  mkdir -p "$u/resin-boot-guard.service.d"
  printf '[Service]\nEnvironment=RESIN_BOOT_GUARD_TIMEOUT=%s\n' "${RESIN_QEMU_GUARD_TIMEOUT:-600}" \
    >"$u/resin-boot-guard.service.d/qemu.conf"
  mkdir -p "$u/resin-supervisor.service.d"
  printf '[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n' \
    >"$u/resin-supervisor.service.d/qemu.conf"
  # Units masked in this OS version (e.g. the supervisor, for the rollback test).
  for p in ${RESIN_QEMU_MASK:-}; do
    rm -f "$u/$p" "$u"/*.target.wants/"$p"
    ln -s /dev/null "$u/$p"
  done
  echo "$out"
}

# device-rootfs OUT VERSION: composes the guest rootfs directory OUT from the
# cached base rootfs, kernel + initrd, the OS layer (os-layer above, same
# environment) and these optional inputs (environment variables):
#   RESIN_QEMU_EXTRA        a directory copied over the result last
#   RESIN_QEMU_MASK         units to mask (space-separated), e.g. resin-supervisor.service
build_device_rootfs() {
  local out=${1:?usage: device-rootfs OUT VERSION} version=${2:?usage: device-rootfs OUT VERSION}
  local base kdir kver initrd p
  base=$(build_rootfs)
  kdir=$(build_kernel)
  kver=$(basename "$kdir"); kver=${kver#kernel-}
  initrd=$(build_initrd)
  rm -rf "$out" "$out.layer" && mkdir -p "$(dirname "$out")"
  build_os_layer "$out.layer" "$version" >/dev/null
  cp -a "$base" "$out"
  rm -f "$out/.complete"

  # Kernel, initrd and (pruned) modules: the kernel is updated with the slot.
  mkdir -p "$out/boot" "$out/lib/modules"
  cp "$kdir/boot/vmlinuz-$kver" "$out/boot/vmlinuz"
  cp "$initrd" "$out/boot/initrd.img"
  cp -a "$kdir/lib/modules/$kver" "$out/lib/modules/"
  for p in "${PRUNE_MODULES[@]}"; do rm -rf "$out/lib/modules/$kver/kernel/$p"; done
  depmod -b "$out" "$kver"

  rm -f "$out/etc/os-release"   # a link to ../usr/lib/os-release in Debian
  cp -a "$out.layer/." "$out/"
  rm -rf "$out.layer"
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
  os-layer) shift; build_os_layer "$@" ;;
  # For scripts/checks/70-meta-resin.sh: the lists above, one entry a line.
  standin-recipes) printf '%s\n' "${STANDIN_RECIPES[@]}" ;;
  not-in-standin) printf '%s\n' "${NOT_IN_STANDIN[@]}" ;;
  qemu-only) printf '%s\n' "${QEMU_ONLY[@]}" ;;
  preflight)
    # What the steps exec: mmdebstrap (with arch-test and qemu-user for arm64),
    # dpkg/depmod/cpio for the kernel and initrd, GRUB, the cross toolchain.
    need mmdebstrap arch-test qemu-aarch64-static dpkg-deb depmod cpio gzip apt-get
    preflight_grub
    preflight_cross
    log "preflight: device assets ok (mmdebstrap, kernel/initrd tools, GRUB arm64-efi, aarch64 cross build)"
    ;;
  *) die "usage: $0 rootfs|kernel|initrd|grub|supervisor|device-rootfs OUT VERSION|os-layer OUT VERSION|standin-recipes|not-in-standin|qemu-only" ;;
esac

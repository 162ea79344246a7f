#!/usr/bin/env bash
# The README's install step on a truly fresh machine, so a package missing
# from RESIN_APT_PACKAGES (scripts/lib/common.sh) fails CI even on a machine
# where someone installed it by hand:
#  1. a clean Debian 12 root: `mmdebstrap --variant=minbase bookworm` with this
#     machine's Debian sources (the tarball is cached under
#     /var/cache/resin-fresh, keyed by the suites and this script's version);
#  2. inside it (chroot), the same `install_packages` the README's two
#     commands run, with the .debs and apt lists cached outside the root;
#  3. inside it, each part's own preflight, which checks what that part will
#     exec or open (not a second list of packages):
#     - the services: `preflight_services` runs each start_* function's own
#       `need` line (PostgreSQL's initdb, dockerd, the registry, rauc);
#     - the QEMU runner: `resin-qemu preflight` starts qemu-system-aarch64
#       with the device's exact machine and device arguments and waits for the
#       UEFI firmware banner, then checks the asset steps' tools, GRUB's
#       arm64 modules and the aarch64 cross build (linker and arm64 std);
#     - imagegen: `resin-imagegen preflight` runs each external tool it uses.
# A package left out of the list makes step 3 fail naming the missing file.
#
#   RESIN_FRESH_KEEP=1 scripts/checks/10-fresh-root.sh   # keep the root for a look
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"
ensure_rust
need mmdebstrap chroot mount umount tar

VERSION=1
CACHE=${RESIN_FRESH_CACHE:-/var/cache/resin-fresh}
mkdir -p "$CACHE/archives/partial" "$CACHE/lists/partial"
MIRROR=$(debian_mirror)
SECURITY=${MIRROR%/debian}/debian-security
SOURCES=("deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" "deb $SECURITY bookworm-security main")
key=$(printf '%s\n' "v$VERSION" "${SOURCES[@]}" | sha256sum | cut -c1-16)
tarball=$CACHE/minbase-bookworm-$key.tar

stage "fresh root: minbase tarball"
if [ ! -s "$tarball" ]; then
  log "making a clean Debian 12 minbase root with mmdebstrap (cached as $tarball)"
  # (the .tar ending makes mmdebstrap write a tarball, not a directory)
  mmdebstrap --quiet --variant=minbase bookworm "$CACHE/partial-$key.tar" "${SOURCES[@]}" \
    || die "mmdebstrap of the fresh root failed"
  mv "$CACHE/partial-$key.tar" "$tarball"
fi
for f in "$CACHE"/minbase-bookworm-*.tar; do [ "$f" = "$tarball" ] || rm -f "$f"; done

stage "fresh root: build the preflight binaries"
cargo build -q ${CI:+--locked} -p resin-qemu-tests -p resin-imagegen

root=$(mktemp -d /var/tmp/resin-fresh.XXXXXX)
mounted=()
cleanup() {
  local m i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    m=${mounted[$i]}
    umount -l "$m" 2>/dev/null || true
  done
  if [ -z "${RESIN_FRESH_KEEP:-}" ]; then rm -rf "$root"; else log "fresh root kept in $root"; fi
}
RESIN_ON_EXIT=cleanup   # run by stage's EXIT trap
bind() { mkdir -p "$root$2"; mount --bind "$1" "$root$2"; mounted+=("$root$2"); }

tar -xf "$tarball" -C "$root"
mount -t proc proc "$root/proc"; mounted+=("$root/proc")
mount -t sysfs sys "$root/sys"; mounted+=("$root/sys")
bind /dev /dev
bind /dev/pts /dev/pts
bind "$CACHE/archives" /var/cache/apt/archives
bind "$CACHE/lists" /var/lib/apt/lists
cp /etc/resolv.conf "$root/etc/resolv.conf"
# No service may start inside the root (postgresql's and docker.io's postinst).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod 0755 "$root/usr/sbin/policy-rc.d"
cat >"$root/etc/apt/apt.conf.d/90resin-fresh" <<'APT'
// Keep the .debs in the cache bound from the host; dpkg without fsync (the root is thrown away).
Binary::apt::APT::Keep-Downloaded-Packages "true";
APT::Keep-Downloaded-Packages "true";
Dpkg::Options { "--force-unsafe-io"; };
APT
# The project as the README's commands see it (no target dir, no .git), and
# the two preflight binaries built on the host.
mkdir -p "$root/resin"
tar -C "$RESIN_ROOT" --exclude=./target --exclude=./.git -c . | tar -x -C "$root/resin"
install -m 0755 "$CARGO_TARGET_DIR/debug/resin-qemu" "$CARGO_TARGET_DIR/debug/resin-imagegen" "$root/usr/local/bin/"

stage "fresh root: install_packages (the README's install step)"
chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  RESIN_ROOT=/resin RESIN_RUN=/tmp/resin-run /bin/bash -c '. /resin/scripts/lib/common.sh && install_packages'

stage "fresh root: each part's preflight"
chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
  RESIN_ROOT=/resin RESIN_RUN=/tmp/resin-run RUST_LOG=warn /bin/bash -c '
    set -euo pipefail
    . /resin/scripts/lib/common.sh
    preflight_services
    cd /resin
    resin-qemu --root /resin preflight
    resin-imagegen preflight'
stage_end
log "fresh root: install and preflight passed in a clean Debian 12 root"

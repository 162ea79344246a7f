# slow
#!/usr/bin/env bash
# QEMU end-to-end check: builds the emulated ARM64 device (the arm64 rootfs,
# kernel, initrd and GRUB are cached under /var/cache/resin-qemu; the aarch64
# supervisor is cross-compiled into target/aarch64-debian), starts resin-cloud
# and the registry on loopback, boots the device and runs every scenario on it.
# See docs/qemu-tests.md.
#
#   RESIN_QEMU_SCENARIOS="boot provision" scripts/checks/90-qemu.sh
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"
install_packages
ensure_rust
ensure_binfmt
start_dockerd
start_registry
write_env

# Every scenario, on one device, in order (an empty list means all but
# `boot`; provision includes the boot of the image the cloud configured):
# provision deploy update-app bad-bundle os-update power-cut rollback.
# RESIN_QEMU_POWER_CUTS raises the power cuts (at least 5).
SCENARIOS=${RESIN_QEMU_SCENARIOS:-}

log "building resin-qemu, resin-cloud and resin-imagegen"
cargo build --quiet ${CI:+--locked} -p resin-qemu-tests -p resin-cloud -p resin-imagegen
# shellcheck disable=SC2086
target/debug/resin-qemu --apps-timeout 600 --power-cuts "${RESIN_QEMU_POWER_CUTS:-5}" run $SCENARIOS

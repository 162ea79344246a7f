# slow
#!/usr/bin/env bash
# QEMU end-to-end check: builds the emulated ARM64 device (the arm64 rootfs,
# kernel, initrd and GRUB are cached under /var/cache/resin-qemu; the aarch64
# supervisor is cross-compiled into target/aarch64-debian), starts resin-cloud
# and the registry on loopback, boots the device and runs the scenarios that
# pass reliably. See docs/qemu-tests.md.
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

# Only scenarios seen passing here are listed (os-update, rollback, bad-bundle
# and power-cut are not implemented yet). provision
# includes the boot (UEFI -> GRUB -> slot A) of the image the cloud configured.
SCENARIOS=${RESIN_QEMU_SCENARIOS:-provision deploy update-app}

log "building resin-qemu, resin-cloud and resin-imagegen"
cargo build --quiet ${CI:+--locked} -p resin-qemu-tests -p resin-cloud -p resin-imagegen
# shellcheck disable=SC2086
target/debug/resin-qemu --apps-timeout 600 run $SCENARIOS

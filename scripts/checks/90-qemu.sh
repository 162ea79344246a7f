# slow
#!/usr/bin/env bash
# QEMU end-to-end check: builds the emulated ARM64 device (the arm64 rootfs,
# kernel, initrd and GRUB are cached under /var/cache/resin-qemu; the aarch64
# supervisor is cross-compiled into /var/cache/resin-cargo/aarch64-debian-*),
# starts resin-cloud and the registry on loopback, boots the device and runs
# every scenario on it. Each setup step is a stage of its own in the run's
# stage-time table. See docs/qemu-tests.md.
#
#   RESIN_QEMU_SCENARIOS="boot provision" scripts/checks/90-qemu.sh
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"

stage "qemu: packages, binfmt, dockerd, registry"
install_packages
ensure_rust
ensure_binfmt
start_dockerd
start_registry
write_env

# Every scenario, on one device, in order (an empty list means all but
# `boot`; provision includes the boot of the image the cloud configured):
# provision deploy update-app remote-access git-push bad-bundle os-update boot-update power-cut rollback
# wrong-ca (last: it replaces the shared device).
# RESIN_QEMU_POWER_CUTS raises the power cuts (at least 5).
SCENARIOS=${RESIN_QEMU_SCENARIOS:-}

stage "qemu: cargo build resin-qemu, resin-cloud, resin-imagegen, resin"
cargo build --quiet ${CI:+--locked} -p resin-qemu-tests -p resin-cloud -p resin-imagegen -p resin-cli
export RESIN_QEMU_BIN_DIR=$CARGO_TARGET_DIR/debug
Q=$RESIN_QEMU_BIN_DIR/resin-qemu

stage "qemu: preflight (qemu to the UEFI banner, asset tools)"
RUST_LOG=warn "$Q" preflight

# The cached device artefacts, each timed (no-ops when their inputs are unchanged).
A=qemu-tests/scripts/assets.sh
stage "qemu: arm64 rootfs (mmdebstrap)";      bash "$A" rootfs >/dev/null
stage "qemu: kernel and initrd";              bash "$A" initrd >/dev/null
stage "qemu: GRUB EFI";                       bash "$A" grub >/dev/null
stage "qemu: cross-compile the supervisor";   bash "$A" supervisor >/dev/null

stage "qemu: scenarios"
# shellcheck disable=SC2086
"$Q" --apps-timeout 600 --power-cuts "${RESIN_QEMU_POWER_CUTS:-5}" run $SCENARIOS
stage_end

#!/usr/bin/env bash
# The demo: builds what it needs (cached), starts resin-cloud and the registry
# on loopback, boots one emulated ARM64 device from a configured image the
# cloud hands out, deploys a sample release (two services), prints where the
# dashboard is (with a one-time login for this run), where the
# cloud is and the device's uuid, then follows the device's logs until Ctrl-C.
#
#   scripts/demo.sh               # the device demo (the first run installs packages and
#                                 # builds the arm64 rootfs, kernel and supervisor; it prints
#                                 # each setup stage's time; later runs reuse the caches)
#   scripts/demo.sh --cloud-only  # fallback: only the cloud on https://127.0.0.1:8080
#                                 # (its own private CA), SQLite under /tmp/resin-demo
#
# Environment: RESIN_DEMO_DIR (default /tmp/resin-demo), RESIN_DEMO_LISTEN
# (default 127.0.0.1:8080). Stops the cloud on Ctrl-C.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$RESIN_ROOT"

DEMO_DIR=${RESIN_DEMO_DIR:-/tmp/resin-demo}
LISTEN=${RESIN_DEMO_LISTEN:-127.0.0.1:8080}
URL="https://$LISTEN"

mkdir -p "$RESIN_RUN"
export RESIN_STAGES=$RESIN_RUN/demo-stages.tsv
: >"$RESIN_STAGES"

stage "apt: Debian packages"
install_packages
ensure_rust

if [ "${1:-}" != "--cloud-only" ]; then
  # The device path: qemu-tests' runner does the whole flow (docs/qemu-tests.md).
  stage "services: binfmt, dockerd, registry"
  ensure_binfmt
  start_dockerd
  start_registry
  write_env
  A=qemu-tests/scripts/assets.sh
  stage "preflight: the asset steps' tools"
  bash "$A" preflight
  # The cached device artefacts (no-ops on later runs), each timed. On a
  # first run the arm64 rootfs (downloads, and maintainer scripts under
  # qemu-user) and the kernel/initrd/GRUB are made in the background while
  # the host and the cross build keep the CPU busy.
  (
    _STAGE_ID=""   # the parent's open stage is the parent's to end
    stage "arm64 rootfs (mmdebstrap), in the background"; bash "$A" rootfs >/dev/null
    stage "kernel and initrd, in the background";          bash "$A" initrd >/dev/null
    stage "GRUB EFI, in the background";                   bash "$A" grub >/dev/null
    stage_end
  ) >"$RESIN_RUN/demo-assets.log" 2>&1 &
  ASSETS_PID=$!
  stage "cargo build: resin-qemu, resin-cloud, resin-imagegen"
  cargo build --quiet -p resin-qemu-tests -p resin-cloud -p resin-imagegen
  export RESIN_QEMU_BIN_DIR=$CARGO_TARGET_DIR/debug
  Q=$RESIN_QEMU_BIN_DIR/resin-qemu
  stage "preflight: qemu to the UEFI banner"
  RUST_LOG=warn "$Q" preflight
  stage "cross-compile the supervisor";  bash "$A" supervisor >/dev/null
  stage "waiting for the background assets"
  wait "$ASSETS_PID" || { tail -30 "$RESIN_RUN/demo-assets.log" >&2; die "building the device's rootfs, kernel or GRUB failed (log: $RESIN_RUN/demo-assets.log)"; }
  stage_end
  log "setup stages (the runner then builds the disk image: its 'setup took' line):"
  stage_table >&2
  mkdir -p "$DEMO_DIR"
  if ! "$Q" --work-dir "$DEMO_DIR/device" --keep run provision deploy --hold; then
    die "the device demo failed (artefacts in $DEMO_DIR/device); scripts/demo.sh --cloud-only runs the cloud alone"
  fi
  exit 0
fi

log "building resin-cloud (release)"
cargo build --release -p resin-cloud
stage_end
CLOUD="$CARGO_TARGET_DIR/release/resin-cloud"

mkdir -p "$DEMO_DIR"
# One config for bootstrap and serve.
export RESIN_CLOUD_DATA_DIR="$DEMO_DIR/cloud"
export RESIN_CLOUD_LISTEN="$LISTEN"
export RESIN_CLOUD_PUBLIC_URL="${RESIN_CLOUD_PUBLIC_URL:-$URL}"
# HTTPS, as in production (docs/cloud-tls.md): a private CA and a server
# certificate for the listen address, made once and kept in the data dir.
CA=$RESIN_CLOUD_DATA_DIR/tls/ca.pem
if [ ! -s "$CA" ]; then
  log "making the cloud's private CA and certificate for ${LISTEN%:*}"
  "$CLOUD" init --host "${LISTEN%:*}" >/dev/null
fi

log "bootstrapping user 'demo' and fleet 'demo' (qemuarm64)"
BOOT_JSON=$("$CLOUD" bootstrap --username demo --fleet demo --device-type qemuarm64)
API_KEY=$(printf '%s' "$BOOT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
FLEET_ID=$(printf '%s' "$BOOT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fleet_id"])')
printf '%s\n' "$API_KEY" > "$DEMO_DIR/api-key"
chmod 600 "$DEMO_DIR/api-key"
# A one-time dashboard password for this run.
WEB_PASSWORD=$(head -c 15 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$WEB_PASSWORD" | "$CLOUD" user passwd demo

log "starting resin-cloud on $URL (log: $DEMO_DIR/cloud.log)"
"$CLOUD" serve >"$DEMO_DIR/cloud.log" 2>&1 &
CLOUD_PID=$!
trap 'log "stopping resin-cloud"; kill "$CLOUD_PID" 2>/dev/null; wait "$CLOUD_PID" 2>/dev/null || true' EXIT INT TERM
wait_for curl -fsS --cacert "$CA" "$URL/ping" || { tail -20 "$DEMO_DIR/cloud.log" >&2; die "resin-cloud did not start"; }

cat <<MSG

  resin-cloud is running at $URL  (SQLite: $RESIN_CLOUD_DATA_DIR/resin.db)
  its CA: $CA  (curl --cacert, resin login --ca; a browser warns once: the CA is private)
  user: demo    fleet: demo (id $FLEET_ID, qemuarm64)
  API key: $API_KEY   (also in $DEMO_DIR/api-key)
  dashboard: $URL/   (log in as demo, one-time password $WEB_PASSWORD)

  Try:
    curl -s --cacert $CA -H "Authorization: Bearer $API_KEY" '$URL/v1/fleet?\$expand=device'
    curl -s --cacert $CA -H "Authorization: Bearer $API_KEY" -X POST $URL/v1/provisioning_key \\
         -H 'Content-Type: application/json' -d '{"fleet": $FLEET_ID, "name": "demo"}'
    curl -s --cacert $CA $URL/openapi.json | head -c 300

  Ctrl-C stops it.
MSG
wait "$CLOUD_PID"

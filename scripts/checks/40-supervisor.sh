#!/usr/bin/env bash
# resin-supervisor: the systemd unit verifies, and its CapabilityBoundingSet
# matches the capabilities the binary keeps (system::KEPT_CAPS).
set -euo pipefail
cd "$(dirname "$0")/../.."
unit=supervisor/dist/resin-supervisor.service
grep -q '^Type=notify$' "$unit"
grep -q '^WatchdogSec=' "$unit"
grep -q '^Restart=always$' "$unit"
want=$(grep -o 'CAP_[A-Z_]*' supervisor/src/system.rs | sort -u | tr '\n' ' ')
have=$(sed -n 's/^CapabilityBoundingSet=//p' "$unit" | tr ' ' '\n' | sort -u | tr '\n' ' ')
[ "$want" = "$have" ] || { echo "unit CapabilityBoundingSet ($have) != KEPT_CAPS ($want)"; exit 1; }
if command -v systemd-analyze >/dev/null; then
  # ExecStart's binary is not installed here; only syntax problems count.
  out=$(systemd-analyze verify "$unit" 2>&1 || true)
  if echo "$out" | grep -v -e 'resin-supervisor' -e 'not executable' -e 'No such file' | grep -qi 'error\|unknown'; then
    echo "$out"; exit 1
  fi
fi
echo "supervisor unit ok"

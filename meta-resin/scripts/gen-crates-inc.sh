#!/usr/bin/env bash
# Regenerates meta-resin/recipes-resin/resin-supervisor/resin-supervisor-crates.inc
# from the workspace Cargo.lock. Run it after any change to Cargo.lock:
#
#   meta-resin/scripts/gen-crates-inc.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec python3 "$here/gen-crates-inc.py" --lock "$here/../../Cargo.lock" \
  --output "$here/../recipes-resin/resin-supervisor/resin-supervisor-crates.inc"

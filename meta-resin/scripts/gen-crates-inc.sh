#!/usr/bin/env bash
# Regenerates meta-resin/recipes-resin/resin-supervisor/resin-supervisor-crates.inc
# from the Cargo.lock of the commit the release recipes build (RESIN_SRCREV in
# meta-resin/recipes-resin/resin-srcrev.inc):
#
#   meta-resin/scripts/gen-crates-inc.sh
#
# To move RESIN_SRCREV and regenerate in one step: meta-resin/scripts/bump-srcrev.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rev=$(sed -n 's/^RESIN_SRCREV = "\([0-9a-f]\{40\}\)"$/\1/p' "$here/../recipes-resin/resin-srcrev.inc")
[ -n "$rev" ] || { echo "gen-crates-inc: no RESIN_SRCREV in resin-srcrev.inc" >&2; exit 1; }
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
git -C "$here" show "$rev:Cargo.lock" >"$tmp" \
  || { echo "gen-crates-inc: commit $rev (RESIN_SRCREV) is not in this clone" >&2; exit 1; }
python3 "$here/gen-crates-inc.py" --lock "$tmp" \
  --output "$here/../recipes-resin/resin-supervisor/resin-supervisor-crates.inc"

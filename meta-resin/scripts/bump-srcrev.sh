#!/usr/bin/env bash
# Moves the commit the release recipes build (RESIN_SRCREV) to COMMIT (default:
# HEAD, which must then be committed already) and regenerates the crates .inc
# from that commit's Cargo.lock. Commit both files afterwards.
#
#   meta-resin/scripts/bump-srcrev.sh [COMMIT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rev=$(git -C "$here" rev-parse --verify "${1:-HEAD}^{commit}")
inc=$here/../recipes-resin/resin-srcrev.inc
sed -i "s/^RESIN_SRCREV = \"[0-9a-f]*\"$/RESIN_SRCREV = \"$rev\"/" "$inc"
grep -q "^RESIN_SRCREV = \"$rev\"$" "$inc" || { echo "bump-srcrev: could not rewrite $inc" >&2; exit 1; }
"$here/gen-crates-inc.sh"
echo "RESIN_SRCREV = $rev; commit $inc and recipes-resin/resin-supervisor/resin-supervisor-crates.inc"

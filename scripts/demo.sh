#!/usr/bin/env bash
# The demo: builds what it needs, starts resin-cloud, and prints how to reach it.
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
cd "$RESIN_ROOT"
install_packages
ensure_rust
echo "demo: not wired yet" >&2
exit 1

#!/usr/bin/env bash
# Starts the real services the tests use (private dockerd, PostgreSQL,
# registry) and writes their addresses to $RESIN_RUN/env.sh.
#   scripts/services.sh            # start all
#   source /tmp/resin-run/env.sh   # then run cargo test by hand
set -euo pipefail
. "$(dirname "$0")/lib/common.sh"
install_packages
ensure_binfmt
start_postgres
start_dockerd
start_registry
write_env
log "services up; source $RESIN_RUN/env.sh"
cat "$RESIN_RUN/env.sh"
